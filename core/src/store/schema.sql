-- ryze-events schema, version 1 (CONTRACT §3). Applied idempotently by `ryze-publisher migrate`.
SET LOCAL client_min_messages TO warning;
CREATE TABLE IF NOT EXISTS accounts (
    id          uuid PRIMARY KEY,
    name        text,
    token_hash  bytea UNIQUE NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS instances (
    id            uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name          text NOT NULL,
    token_hash    bytea UNIQUE NOT NULL,
    token_secret  bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

CREATE TABLE IF NOT EXISTS websocket_configs (
    instance_id   uuid PRIMARY KEY REFERENCES instances ON DELETE CASCADE,
    enabled       boolean NOT NULL,
    events        text[] NOT NULL DEFAULT '{}',
    media_base64  boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Caches in every process listen on `ryze_config`, so they never wait for a TTL.
CREATE OR REPLACE FUNCTION ryze_notify_config() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'instances' THEN
        PERFORM pg_notify('ryze_config', OLD.id::text);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('ryze_config', OLD.instance_id::text);
    ELSE
        PERFORM pg_notify('ryze_config', NEW.instance_id::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS ryze_websocket_configs_notify ON websocket_configs;
CREATE TRIGGER ryze_websocket_configs_notify
    AFTER INSERT OR UPDATE OR DELETE ON websocket_configs
    FOR EACH ROW EXECUTE FUNCTION ryze_notify_config();

DROP TRIGGER IF EXISTS ryze_instances_notify ON instances;
CREATE TRIGGER ryze_instances_notify
    AFTER UPDATE OR DELETE ON instances
    FOR EACH ROW EXECUTE FUNCTION ryze_notify_config();
