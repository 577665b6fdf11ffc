# What the grant orders-db-read issues: credentials of the orders-read database role.
path "database/creds/orders-read" { capabilities = ["read"] }
