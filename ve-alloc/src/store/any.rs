//! The store a command runs on: the local SQLite one or the fleet's etcd one, behind
//! one set of methods. Writes take `FnMut` closures because the etcd store runs a
//! transaction again when another writer changed what it read.

use std::collections::HashSet;

use common::Result;

use super::{
    etcd::{self, EtcdStore},
    SqliteStore, Store, Txn,
};
use crate::{
    alloc::{self, Pools},
    lease::Lease,
};

pub enum AnyStore {
    Sqlite(SqliteStore),
    Etcd(EtcdStore),
}

impl AnyStore {
    pub fn read<T>(&mut self, mut f: impl FnMut(&mut dyn Txn) -> Result<T>) -> Result<T> {
        match self {
            AnyStore::Sqlite(s) => s.read(f),
            AnyStore::Etcd(s) => s.read(|tx| f(tx)),
        }
    }

    pub fn write<T>(&mut self, mut f: impl FnMut(&mut dyn Txn) -> Result<T>) -> Result<T> {
        match self {
            AnyStore::Sqlite(s) => s.write(f),
            AnyStore::Etcd(s) => s.write(|tx| f(tx)),
        }
    }

    /// Lease each of `names` in one transaction (on etcd from this node's blocks).
    pub fn allocate(&mut self, pools: &Pools, names: &[&String]) -> Result<Vec<Lease>> {
        let several = names.len() > 1;
        let ctx = |n: &str, e: common::Error| if several { e.context(n) } else { e };
        match self {
            AnyStore::Sqlite(s) => s.write(|tx| {
                names
                    .iter()
                    .map(|n| alloc::allocate(tx, pools, n).map_err(|e| ctx(n, e)))
                    .collect()
            }),
            AnyStore::Etcd(s) => s.write(|tx| {
                // Every name's lease in one round trip, not one each.
                let all: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                tx.prefetch_for_alloc(&all)?;
                names
                    .iter()
                    .map(|n| etcd::allocate(tx, pools, n).map_err(|e| ctx(n, e)))
                    .collect()
            }),
        }
    }

    /// `gc`: on etcd, of this node's leases only.
    pub fn gc(&mut self, keep: &HashSet<String>, dry_run: bool) -> Result<Vec<Lease>> {
        match (self, dry_run) {
            (AnyStore::Sqlite(s), true) => s.read(|tx| alloc::gc(tx, keep, true)),
            (AnyStore::Sqlite(s), false) => s.write(|tx| alloc::gc(tx, keep, false)),
            (AnyStore::Etcd(s), true) => s.read(|tx| {
                tx.only_this_node();
                alloc::gc(tx, keep, true)
            }),
            // One transaction per lease: etcd caps a transaction at 128 operations, and
            // gc needs no atomicity (a lease another run released meanwhile is skipped).
            (AnyStore::Etcd(s), false) => {
                let gone = s.read(|tx| {
                    tx.only_this_node();
                    alloc::gc(tx, keep, true)
                })?;
                let mut done = Vec::with_capacity(gone.len());
                for l in gone {
                    let removed = s.write(|tx| match tx.get(&l.name)? {
                        Some(now) if now == l => tx.remove(&l.name),
                        _ => Ok(false),
                    })?;
                    if removed {
                        done.push(l);
                    }
                }
                Ok(done)
            }
        }
    }

    /// Release `names`; each with whether it held a lease. Names that hold nothing
    /// touch nothing, not even SQLite's lock; on etcd each name is one transaction
    /// (etcd caps a transaction at 128 operations; release needs no atomicity).
    pub fn release<'n>(&mut self, names: &'n [String]) -> Result<Vec<(&'n String, bool)>> {
        match self {
            AnyStore::Sqlite(s) => {
                let held = s.read(|tx| {
                    names
                        .iter()
                        .try_fold(false, |any, n| Ok(any || tx.get(n)?.is_some()))
                })?;
                if !held {
                    return Ok(names.iter().map(|n| (n, false)).collect());
                }
                s.write(|tx| {
                    names
                        .iter()
                        .map(|n| tx.remove(n).map(|removed| (n, removed)))
                        .collect()
                })
            }
            AnyStore::Etcd(s) => names
                .iter()
                .map(|n| Ok((n, s.write(|tx| tx.remove(n))?)))
                .collect(),
        }
    }

    /// Every lease, ordered by name, with its node on an etcd store.
    pub fn list(&mut self) -> Result<Vec<(Lease, Option<String>)>> {
        match self {
            AnyStore::Sqlite(s) => Ok(s
                .read(|tx| tx.all())?
                .into_iter()
                .map(|l| (l, None))
                .collect()),
            AnyStore::Etcd(s) => Ok(s
                .read(|tx| tx.all_with_nodes())?
                .into_iter()
                .map(|(l, n)| (l, Some(n)))
                .collect()),
        }
    }
}
