"""The web edge: `/ws`, the frame layer, the HTTP reads, headers, deadlines, metrics."""
