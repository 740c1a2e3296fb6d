//! The store a command runs on: the local SQLite one or the fleet's etcd one, behind
//! one set of methods. Writes take `FnMut` closures because the etcd store runs a
//! transaction again when another writer changed what it read.

use std::collections::HashSet;

use common::{name, Result};

use super::{
    etcd::{self, EtcdStore, EtcdTxn},
    SqliteStore, Store, Txn,
};
use crate::{
    alloc::{self, Pools},
    lease::Lease,
};

/// The most compares or writes one name of `alloc NAME...` adds to an etcd
/// transaction: its lease key, two IPv4 and two IPv6 addresses, the names sharing a
/// long name's interface prefix, and a block of each family.
const ALLOC_OPS: usize = 8;
/// The same for one lease of `import`: its lease key, up to four addresses and the
/// interface-prefix range.
const IMPORT_OPS: usize = 6;
/// Names whose leases one round trip reads ahead.
const WINDOW: usize = 8;

/// `each` over `items` in as many etcd transactions as etcd's limit of operations per
/// transaction ([`etcd::MAX_TXN_OPS`]) needs, each all or none and run again on a lost
/// race like any write: a transaction takes the next item while its `per_item`
/// operations at most still fit (the first always). `prefetch` reads the next
/// [`WINDOW`] items ahead in one round trip; what it read for items the transaction
/// leaves out is not compared at its commit.
fn in_txns<I, T>(
    s: &mut EtcdStore,
    items: &[I],
    per_item: usize,
    mut prefetch: impl FnMut(&mut EtcdTxn, &[I]) -> Result<()>,
    mut each: impl FnMut(&mut EtcdTxn, &I) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    while out.len() < items.len() {
        let rest = &items[out.len()..];
        let done = s.write(|tx| {
            let mut done = Vec::new();
            for (i, item) in rest.iter().enumerate() {
                if i > 0 && tx.ops() + per_item > etcd::MAX_TXN_OPS {
                    break;
                }
                if i % WINDOW == 0 {
                    prefetch(tx, &rest[i..(i + WINDOW).min(rest.len())])?;
                }
                done.push(each(tx, item)?);
            }
            Ok(done)
        })?;
        if done.len() < rest.len() {
            log::debug!(
                "etcd: {} of {} committed in one transaction (etcd's limit of {} \
                 operations)",
                done.len(),
                rest.len(),
                etcd::MAX_TXN_OPS
            );
        }
        out.extend(done);
    }
    Ok(out)
}

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

    /// Lease each of `names` in one transaction (on etcd from this node's blocks, in as
    /// many transactions as etcd's limit needs, after the interface name of every new
    /// name was checked in one read-only view: a clash found there changes nothing).
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
            // The leases of a window of names are read in one round trip, not one each.
            AnyStore::Etcd(s) => {
                // Only long names can clash (`alloc::check_ifname`).
                let long: Vec<&str> = names
                    .iter()
                    .map(|n| n.as_str())
                    .filter(|n| name::kept_prefix(name::HOST_PREFIX, n).is_some())
                    .collect();
                if several && !long.is_empty() {
                    s.read(|tx| {
                        tx.prefetch_for_alloc(&long)?;
                        tx.prefetch_ifname_prefixes(&long)?;
                        for n in &long {
                            if tx.get(n)?.is_none() {
                                alloc::check_ifname(tx, n, name::host_ifname)
                                    .map_err(|e| ctx(n, e))?;
                            }
                        }
                        Ok(())
                    })?;
                }
                in_txns(
                    s,
                    names,
                    ALLOC_OPS,
                    |tx, window| {
                        let window: Vec<&str> = window.iter().map(|n| n.as_str()).collect();
                        tx.prefetch_for_alloc(&window)?;
                        tx.prefetch_ifname_prefixes(&window)
                    },
                    |tx, n| etcd::allocate(tx, pools, n).map_err(|e| ctx(n, e)),
                )
            }
        }
    }

    /// `import`: record `leases` as static ones, checked as `reserve` checks them. On
    /// SQLite in one transaction; on etcd all are checked first in one read-only view
    /// (a conflict found there changes nothing), then recorded in as many transactions
    /// as etcd's limit needs.
    pub fn import(&mut self, leases: &[Lease]) -> Result<Vec<Lease>> {
        let put =
            |tx: &mut dyn Txn, l: &Lease| alloc::put_checked(tx, l).map_err(|e| e.context(&l.name));
        match self {
            AnyStore::Sqlite(s) => s.write(|tx| {
                leases
                    .iter()
                    .map(|l| put(tx, l))
                    .collect::<Result<Vec<_>>>()
            }),
            AnyStore::Etcd(s) => {
                s.read(|tx| {
                    tx.prefetch_for_import(leases)?;
                    leases.iter().try_for_each(|l| put(tx, l).map(drop))
                })?;
                in_txns(
                    s,
                    leases,
                    IMPORT_OPS,
                    |tx, window| tx.prefetch_for_import(window),
                    |tx, l| put(tx, l),
                )
            }
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
