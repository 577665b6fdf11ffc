SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';
REVOKE ALL ON orders FROM "{{name}}";
DROP ROLE IF EXISTS "{{name}}";
