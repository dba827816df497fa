-- A console database as a Laravel application's migrations create it (the shape opspush's
-- attach tests and `opspush demo --attach` run against). Laravel conventions: bigserial ids,
-- varchar(255) strings, timestamp(0) without time zone holding UTC, json columns (and one
-- text column holding JSON), soft deletes, pivot tables, and a roles/permissions model in the
-- style of spatie/laravel-permission. Columns opspush does not read are here on purpose.

CREATE TABLE users (
    id                bigserial PRIMARY KEY,
    name              varchar(255) NOT NULL,
    email             varchar(255) NOT NULL,
    email_verified_at timestamp(0) without time zone NULL,
    password          varchar(255) NOT NULL,
    remember_token    varchar(100) NULL,
    created_at        timestamp(0) without time zone NULL,
    updated_at        timestamp(0) without time zone NULL,
    deleted_at        timestamp(0) without time zone NULL
);
ALTER TABLE users ADD CONSTRAINT users_email_unique UNIQUE (email);

CREATE TABLE workspaces (
    id         bigserial PRIMARY KEY,
    name       varchar(255) NOT NULL,
    slug       varchar(255) NOT NULL,
    settings   json NULL,
    created_at timestamp(0) without time zone NULL,
    updated_at timestamp(0) without time zone NULL,
    deleted_at timestamp(0) without time zone NULL
);
ALTER TABLE workspaces ADD CONSTRAINT workspaces_slug_unique UNIQUE (slug);

CREATE TABLE tenants (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    display_name varchar(255) NOT NULL,
    tenant_guid  uuid NULL,
    status       varchar(255) NOT NULL DEFAULT 'active',
    created_at   timestamp(0) without time zone NULL,
    updated_at   timestamp(0) without time zone NULL,
    deleted_at   timestamp(0) without time zone NULL
);
ALTER TABLE tenants ADD CONSTRAINT tenants_workspace_id_foreign
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
CREATE INDEX tenants_workspace_id_index ON tenants (workspace_id);

-- Pivot: workspace membership, with the member's role name.
CREATE TABLE workspace_user (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL,
    user_id      bigint NOT NULL,
    role         varchar(255) NOT NULL DEFAULT 'readonly',
    invited_by   bigint NULL,
    created_at   timestamp(0) without time zone NULL,
    updated_at   timestamp(0) without time zone NULL,
    deleted_at   timestamp(0) without time zone NULL
);
ALTER TABLE workspace_user ADD CONSTRAINT workspace_user_workspace_id_foreign
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE workspace_user ADD CONSTRAINT workspace_user_user_id_foreign
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE workspace_user ADD CONSTRAINT workspace_user_workspace_id_user_id_unique
    UNIQUE (workspace_id, user_id);
CREATE INDEX workspace_user_user_id_index ON workspace_user (user_id);

-- Pivot: direct entitlement of a user to a tenant.
CREATE TABLE tenant_user (
    id         bigserial PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    user_id    bigint NOT NULL,
    created_at timestamp(0) without time zone NULL,
    updated_at timestamp(0) without time zone NULL
);
ALTER TABLE tenant_user ADD CONSTRAINT tenant_user_tenant_id_foreign
    FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;
ALTER TABLE tenant_user ADD CONSTRAINT tenant_user_user_id_foreign
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE tenant_user ADD CONSTRAINT tenant_user_tenant_id_user_id_unique
    UNIQUE (tenant_id, user_id);
-- (no index on tenant_user.user_id: `opspush attach --check` suggests one)

-- Capabilities: roles and permissions (spatie/laravel-permission's tables).
CREATE TABLE roles (
    id         bigserial PRIMARY KEY,
    name       varchar(255) NOT NULL,
    guard_name varchar(255) NOT NULL,
    created_at timestamp(0) without time zone NULL,
    updated_at timestamp(0) without time zone NULL
);
ALTER TABLE roles ADD CONSTRAINT roles_name_guard_name_unique UNIQUE (name, guard_name);

CREATE TABLE permissions (
    id         bigserial PRIMARY KEY,
    name       varchar(255) NOT NULL,
    guard_name varchar(255) NOT NULL,
    created_at timestamp(0) without time zone NULL,
    updated_at timestamp(0) without time zone NULL
);
ALTER TABLE permissions ADD CONSTRAINT permissions_name_guard_name_unique UNIQUE (name, guard_name);

CREATE TABLE role_has_permissions (
    permission_id bigint NOT NULL,
    role_id       bigint NOT NULL,
    PRIMARY KEY (permission_id, role_id)
);
ALTER TABLE role_has_permissions ADD CONSTRAINT role_has_permissions_permission_id_foreign
    FOREIGN KEY (permission_id) REFERENCES permissions (id) ON DELETE CASCADE;
ALTER TABLE role_has_permissions ADD CONSTRAINT role_has_permissions_role_id_foreign
    FOREIGN KEY (role_id) REFERENCES roles (id) ON DELETE CASCADE;

-- Extra permission needed to view runs of a type (config the console keeps in a table).
CREATE TABLE operation_type_permissions (
    id              bigserial PRIMARY KEY,
    operation_type  varchar(255) NOT NULL,
    permission_name varchar(255) NOT NULL
);

CREATE TABLE operation_runs (
    id                bigserial PRIMARY KEY,
    workspace_id      bigint NOT NULL,
    tenant_id         bigint NULL,
    user_id           bigint NULL,
    type              varchar(255) NOT NULL,
    status            varchar(255) NOT NULL DEFAULT 'queued',
    outcome           varchar(255) NOT NULL DEFAULT 'pending',
    run_identity_hash varchar(64) NULL,
    context           json NULL,
    summary_counts    json NULL,
    failure_summary   json NULL,
    started_at        timestamp(0) without time zone NULL,
    completed_at      timestamp(0) without time zone NULL,
    created_at        timestamp(0) without time zone NULL,
    updated_at        timestamp(0) without time zone NULL
);
ALTER TABLE operation_runs ADD CONSTRAINT operation_runs_workspace_id_foreign
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE operation_runs ADD CONSTRAINT operation_runs_tenant_id_foreign
    FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;
ALTER TABLE operation_runs ADD CONSTRAINT operation_runs_user_id_foreign
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL;
CREATE INDEX operation_runs_workspace_id_status_index ON operation_runs (workspace_id, status);
CREATE INDEX operation_runs_run_identity_hash_index ON operation_runs (run_identity_hash);

CREATE TABLE review_packs (
    id                   bigserial PRIMARY KEY,
    workspace_id         bigint NOT NULL,
    tenant_id            bigint NOT NULL,
    operation_run_id     bigint NULL,
    initiated_by_user_id bigint NULL,
    status               varchar(255) NOT NULL DEFAULT 'queued',
    fingerprint          varchar(64) NULL,
    options              json NULL,
    summary              text NULL,  -- JSON, written by an older version of the console as text
    generated_at         timestamp(0) without time zone NULL,
    expires_at           timestamp(0) without time zone NULL,
    file_path            varchar(255) NULL,
    file_disk            varchar(255) NULL,
    file_size            bigint NULL,
    sha256               varchar(64) NULL,
    created_at           timestamp(0) without time zone NULL,
    updated_at           timestamp(0) without time zone NULL,
    deleted_at           timestamp(0) without time zone NULL
);
ALTER TABLE review_packs ADD CONSTRAINT review_packs_tenant_id_foreign
    FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;
CREATE INDEX review_packs_tenant_id_created_at_index ON review_packs (tenant_id, created_at);
