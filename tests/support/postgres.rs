//! A private PostgreSQL 15 cluster per test: initdb in a temporary folder, loopback only, run
//! as the `postgres` user (the server refuses root). Binaries come from `pg_config --bindir`.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::free_port;

pub const DB: &str = "orders";
pub const ADMIN: &str = "bao_admin";
pub const ADMIN_PASSWORD: &str = "bao-admin-pw";

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("pg_config: {e} (is PostgreSQL installed?)"));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs a PostgreSQL binary as the server's owner: `postgres` when we are root.
fn as_owner(bin: PathBuf) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    /// Starts a cluster with a database `orders` (table `orders`, three rows) and a connection
    /// user for OpenBao's database engine that may create roles and grant SELECT on `orders`.
    pub fn start() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = bindir();
        // Not a TempDir under the test's own dir: every parent must be traversable by `postgres`.
        let dir = std::env::temp_dir().join(format!(
            "credbroker-pg-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("the postgres base dir should be created");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("the postgres base dir should be made traversable");
        let data = dir.join("data");
        std::fs::create_dir(&data).expect("the postgres data dir should be created");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .expect("the postgres data dir should be made private");
        if nix::unistd::geteuid().is_root() {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .output(),
            );
        }
        check(
            "initdb",
            as_owner(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .output(),
        );
        let port = free_port();
        check(
            "pg_ctl start",
            as_owner(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log"))
                .args(["-w", "-o"])
                .arg(format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
                    dir.display()
                ))
                .arg("start")
                .output(),
        );
        let pg = Self { port, dir, bin };
        // One statement per call: psql -c runs several in one transaction, which CREATE
        // DATABASE refuses.
        pg.superuser("postgres", &format!("CREATE DATABASE {DB}"));
        pg.superuser(
            "postgres",
            &format!("CREATE ROLE {ADMIN} WITH LOGIN PASSWORD '{ADMIN_PASSWORD}' CREATEROLE"),
        );
        pg.superuser("postgres", &format!("GRANT pg_signal_backend TO {ADMIN}"));
        pg.superuser(
            DB,
            &format!(
                "CREATE TABLE orders(id int, item text);
                 INSERT INTO orders VALUES (1,'apple'),(2,'banana'),(3,'cherry');
                 GRANT SELECT ON orders TO {ADMIN} WITH GRANT OPTION;"
            ),
        );
        pg
    }

    /// Runs SQL as the superuser over the private unix socket.
    pub fn superuser(&self, db: &str, sql: &str) -> String {
        let out = check(
            "psql",
            as_owner(self.bin.join("psql"))
                .arg("-h")
                .arg(&self.dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-Atq",
                    "-d",
                    db,
                    "-c",
                    sql,
                ])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Logs in over TCP with a password, as a workload would, and runs `sql`.
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname={DB} connect_timeout=5",
                self.port
            ))
            .args(["-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env_remove("PGUSER")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Login roles OpenBao created (`v-…`) that still exist.
    pub fn dynamic_roles(&self) -> Vec<String> {
        let out = self.superuser(
            "postgres",
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY 1",
        );
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn url(&self) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/{DB}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_owner(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
