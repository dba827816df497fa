-- The tables of docs/domain.md. Every foreign key cascades so that deleting a workspace,
-- a tenant or a user removes what hangs off it; the push service then sees `gone`.

CREATE TABLE workspaces (
    id   bigserial PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE tenants (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    external_id  text
);
CREATE INDEX tenants_workspace_id_idx ON tenants (workspace_id);

CREATE TABLE users (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL UNIQUE
);

CREATE TABLE workspace_memberships (
    workspace_id bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
-- Access facts are loaded per user.
CREATE INDEX workspace_memberships_user_id_idx ON workspace_memberships (user_id);

CREATE TABLE tenant_entitlements (
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_entitlements_user_id_idx ON tenant_entitlements (user_id);

CREATE TABLE role_capabilities (
    role       text NOT NULL,
    capability text NOT NULL,
    PRIMARY KEY (role, capability)
);

CREATE TABLE operation_type_capabilities (
    type       text NOT NULL,
    capability text NOT NULL,
    PRIMARY KEY (type, capability)
);

CREATE TABLE operation_runs (
    id                   bigserial PRIMARY KEY,
    workspace_id         bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    tenant_id            bigint REFERENCES tenants (id) ON DELETE CASCADE,
    type                 text NOT NULL,
    status               text NOT NULL DEFAULT 'queued',
    outcome              text NOT NULL DEFAULT 'pending',
    context              jsonb NOT NULL DEFAULT '{}'::jsonb,
    summary_counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    failure_summary      jsonb NOT NULL DEFAULT '[]'::jsonb,
    initiated_by_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    completed_at         timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- The wall: the active runs of a workspace (small, so a partial index) ...
CREATE INDEX operation_runs_active_idx ON operation_runs (workspace_id, created_at DESC)
    WHERE status IN ('queued', 'running');
-- ... and the runs of a workspace completed in the last 15 minutes.
CREATE INDEX operation_runs_completed_idx ON operation_runs (workspace_id, completed_at DESC)
    WHERE completed_at IS NOT NULL;
CREATE INDEX operation_runs_tenant_id_idx ON operation_runs (tenant_id);

CREATE TABLE review_packs (
    id                   bigserial PRIMARY KEY,
    workspace_id         bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    tenant_id            bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    operation_run_id     bigint REFERENCES operation_runs (id) ON DELETE SET NULL,
    initiated_by_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    status               text NOT NULL DEFAULT 'queued',
    options              jsonb NOT NULL DEFAULT '{}'::jsonb,
    summary              jsonb NOT NULL DEFAULT '{}'::jsonb,
    generated_at         timestamptz,
    expires_at           timestamptz,
    file_path            text,
    file_disk            text,
    file_size            bigint,
    sha256               text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- The card shows the latest pack of a tenant: newest created_at, then highest id.
CREATE INDEX review_packs_latest_idx ON review_packs (tenant_id, created_at DESC, id DESC);
