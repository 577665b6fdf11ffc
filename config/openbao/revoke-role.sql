-- One statement, so it is safe to run again for a role that is already gone (OpenBao runs a
-- revocation again after a partial failure, and a DBA may have dropped the role by hand).
DO $$
BEGIN
  PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{{name}}') THEN
    REVOKE ALL ON orders FROM "{{name}}";
    DROP ROLE "{{name}}";
  END IF;
END
$$;
