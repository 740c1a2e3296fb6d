//! An in-memory store for unit tests of the allocation logic.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use common::{Error, Result};

use super::{Store, Txn};
use crate::lease::Lease;

#[derive(Debug, Clone, Default)]
pub struct MemStore {
    leases: BTreeMap<String, Lease>,
    addrs: HashMap<IpAddr, String>,
    cursors: [Option<IpAddr>; 2],
}

impl Txn for MemStore {
    fn get(&mut self, name: &str) -> Result<Option<Lease>> {
        Ok(self.leases.get(name).cloned())
    }

    fn all(&mut self) -> Result<Vec<Lease>> {
        Ok(self.leases.values().cloned().collect())
    }

    fn names_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .leases
            .range(prefix.to_string()..)
            .map(|(n, _)| n)
            .take_while(|n| n.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn holder(&mut self, addr: IpAddr) -> Result<Option<String>> {
        Ok(self.addrs.get(&addr).cloned())
    }

    fn put(&mut self, lease: &Lease) -> Result<()> {
        self.remove(&lease.name)?;
        for a in lease.addresses() {
            if let Some(other) = self.addrs.insert(a, lease.name.clone()) {
                return Err(Error::internal(format!("{a} already held by {other}")));
            }
        }
        self.leases.insert(lease.name.clone(), lease.clone());
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<bool> {
        let Some(old) = self.leases.remove(name) else {
            return Ok(false);
        };
        for a in old.addresses() {
            self.addrs.remove(&a);
        }
        Ok(true)
    }

    fn cursor(&mut self, v6: bool) -> Result<Option<IpAddr>> {
        Ok(self.cursors[usize::from(v6)])
    }

    fn set_cursor(&mut self, v6: bool, host: IpAddr) -> Result<()> {
        self.cursors[usize::from(v6)] = Some(host);
        Ok(())
    }
}

impl Store for MemStore {
    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T> {
        f(&mut self.clone())
    }

    fn write<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T> {
        let mut tx = self.clone();
        let out = f(&mut tx)?;
        *self = tx;
        Ok(out)
    }
}
