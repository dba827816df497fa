"""The pure rules: status, intervals, access, channels, the wire protocol, tokens; no I/O."""
