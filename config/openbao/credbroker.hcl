# The policy of credbroker's own OpenBao/Vault token: what the daemon does, and nothing more.
# Per grant, add what the grant issues (here: orders-read, in its own policy), or give those
# policies to the token too. Without `scope_role`, every per-task scope token is a child of this
# token and may hold only policies this token holds ("child policies must be subset of parent").

# Per-task scope tokens (children of this token; they die with the task), and their lifecycle.
path "auth/token/create"          { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/renew-accessor"  { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
# Dynamic secrets' leases: renewed with their task, revoked when it ends, looked up on recovery.
path "sys/leases/renew"           { capabilities = ["update"] }
path "sys/leases/revoke"          { capabilities = ["update"] }
path "sys/leases/lookup"          { capabilities = ["update"] }
# `check-config --online` asks what this token may do.
path "sys/capabilities-self"      { capabilities = ["update"] }
