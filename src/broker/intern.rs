//! Interning of the names tasks repeat (workload, tool, issuer, client, subject, owner, token
//! fingerprint, grant, provider…): with 100,000 live tasks of a handful of workloads and
//! clients, one copy of each instead of one per task is most of the difference between
//! 200 MB and 100 MB.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::journal::rows::Text;

#[derive(Default)]
pub(crate) struct Interner {
    set: Mutex<HashSet<Text>>,
}

impl Interner {
    pub(crate) fn get(&self, s: &str) -> Text {
        let Ok(mut set) = self.set.lock() else {
            return Arc::from(s);
        };
        if let Some(t) = set.get(s) {
            return Arc::clone(t);
        }
        let t: Text = Arc::from(s);
        set.insert(Arc::clone(&t));
        t
    }

    pub(crate) fn opt(&self, s: Option<&str>) -> Option<Text> {
        s.map(|s| self.get(s))
    }

    /// Drops the names no live task uses any more.
    pub(crate) fn purge(&self) {
        if let Ok(mut set) = self.set.lock() {
            set.retain(|t| Arc::strong_count(t) > 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_forgets() {
        let i = Interner::default();
        let a = i.get("postgres-mcp");
        let b = i.get("postgres-mcp");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        i.purge();
        assert_eq!(i.set.lock().map(|s| s.len()).unwrap_or(9), 0);
    }
}
