-- Default capabilities of the built-in roles. Owners and managers hold every capability by
-- a rule in code, not by rows; these rows are editable by the host application.
INSERT INTO role_capabilities (role, capability) VALUES
    ('operator', 'operations.view'),
    ('operator', 'review_pack.view'),
    ('operator', 'review_pack.manage'),
    ('readonly', 'operations.view'),
    ('readonly', 'review_pack.view')
ON CONFLICT DO NOTHING;
