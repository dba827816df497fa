-- Change notifications for instant wake-ups. Payloads carry identifiers only; they are
-- hints: the push service re-reads persisted state, and its tick catches anything missed.
--   r:<run id>:<workspace id>   a run changed (its viewer and its workspace's wall)
--   p:<tenant id>               a tenant's packs changed (its review pack card)
--   t:<tenant id>               a tenant was deleted
--   w:<workspace id>            a workspace was deleted
--   a                           access facts changed (memberships, entitlements, capabilities)

CREATE FUNCTION opspush_notify_run() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row operation_runs;
BEGIN
    row := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    PERFORM pg_notify('opspush', 'r:' || row.id || ':' || row.workspace_id);
    IF TG_OP = 'UPDATE' AND OLD.workspace_id <> NEW.workspace_id THEN
        PERFORM pg_notify('opspush', 'r:' || OLD.id || ':' || OLD.workspace_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER operation_runs_notify_insert_delete
    AFTER INSERT OR DELETE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION opspush_notify_run();

-- Only the columns a viewer sees; `context` and `updated_at` alone wake nobody.
CREATE TRIGGER operation_runs_notify_update
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN ((OLD.status, OLD.outcome, OLD.summary_counts, OLD.failure_summary, OLD.type,
           OLD.tenant_id, OLD.workspace_id, OLD.created_at, OLD.started_at, OLD.completed_at)
          IS DISTINCT FROM
          (NEW.status, NEW.outcome, NEW.summary_counts, NEW.failure_summary, NEW.type,
           NEW.tenant_id, NEW.workspace_id, NEW.created_at, NEW.started_at, NEW.completed_at))
    EXECUTE FUNCTION opspush_notify_run();

CREATE FUNCTION opspush_notify_pack() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('opspush', 'p:' || OLD.tenant_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('opspush', 'p:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER review_packs_notify
    AFTER INSERT OR UPDATE OR DELETE ON review_packs
    FOR EACH ROW EXECUTE FUNCTION opspush_notify_pack();

CREATE FUNCTION opspush_notify_deleted_scope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('opspush', 't:' || OLD.id);
    ELSE
        PERFORM pg_notify('opspush', 'w:' || OLD.id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_notify_delete
    AFTER DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION opspush_notify_deleted_scope();

CREATE TRIGGER workspaces_notify_delete
    AFTER DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION opspush_notify_deleted_scope();

-- Access: one notification per statement is enough, since every subscription is re-checked.
CREATE FUNCTION opspush_notify_access() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('opspush', 'a');
    RETURN NULL;
END $$;

CREATE TRIGGER workspace_memberships_notify
    AFTER INSERT OR UPDATE OR DELETE ON workspace_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION opspush_notify_access();
CREATE TRIGGER tenant_entitlements_notify
    AFTER INSERT OR UPDATE OR DELETE ON tenant_entitlements
    FOR EACH STATEMENT EXECUTE FUNCTION opspush_notify_access();
CREATE TRIGGER role_capabilities_notify
    AFTER INSERT OR UPDATE OR DELETE ON role_capabilities
    FOR EACH STATEMENT EXECUTE FUNCTION opspush_notify_access();
CREATE TRIGGER operation_type_capabilities_notify
    AFTER INSERT OR UPDATE OR DELETE ON operation_type_capabilities
    FOR EACH STATEMENT EXECUTE FUNCTION opspush_notify_access();
