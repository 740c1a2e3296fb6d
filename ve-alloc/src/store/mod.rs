//! Where leases live. The allocator sees only the [`Store`] and [`Txn`] traits, so the
//! SQLite store can be swapped for another (a distributed one) and the allocation logic
//! is tested against an in-memory store.

mod any;
pub mod etcd;
#[cfg(test)]
pub mod mem;
mod sqlite;

use std::net::IpAddr;

use common::Result;

use crate::lease::Lease;

pub use any::AnyStore;
pub use sqlite::{Durability, SqliteStore, DB_FILE};

/// One transaction's view of the leases. Every method sees the writes made earlier in
/// the same transaction.
pub trait Txn {
    /// The lease held by `name`.
    fn get(&mut self, name: &str) -> Result<Option<Lease>>;
    /// Every lease, ordered by name.
    fn all(&mut self) -> Result<Vec<Lease>>;
    /// The names of leases that start with `prefix`, ordered.
    fn names_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>>;
    /// The name holding `addr`, if any.
    fn holder(&mut self, addr: IpAddr) -> Result<Option<String>>;
    /// Insert `lease`, or replace the lease of the same name. Its addresses must not be
    /// held by another name.
    fn put(&mut self, lease: &Lease) -> Result<()>;
    /// Remove the lease of `name`; false when there was none.
    fn remove(&mut self, name: &str) -> Result<bool>;
    /// The host address handed out last from the pool of this family (round robin).
    fn cursor(&mut self, v6: bool) -> Result<Option<IpAddr>>;
    fn set_cursor(&mut self, v6: bool, host: IpAddr) -> Result<()>;
}

/// A lease store: runs closures in transactions.
pub trait Store {
    /// Run `f` in a read-only view. A store that does not exist yet reads as empty; one
    /// that cannot be read is an error, never empty.
    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T>;
    /// Run `f` in a write transaction, committed when `f` returns `Ok`, rolled back
    /// otherwise. Writers exclude each other; a writer waits for a busy store.
    fn write<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T>;
}
