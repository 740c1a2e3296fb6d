//! The lease store in etcd v3, shared by a fleet of hosts (nodes).
//!
//! Keys, all under PREFIX (default `/ve-alloc`):
//! - `lease/NAME`: the lease, as JSON, with the node that holds it;
//! - `addr/4/HEX` and `addr/6/HEX` (the address as fixed-width hex, so that a block is
//!   one key range): the name holding the address; a transaction creates it only where
//!   it is absent, so an address can never be leased twice;
//! - `block/4/HEX`, `block/6/HEX`: the node that claimed the block starting there;
//! - `meta/block-bits/4|6`: the block size every node must agree on;
//! - `meta/claimed/4|6`: a hint for the next claim, `{"from","to"}` in hex: every block
//!   in between is claimed (kept true by compare-and-swap, deleted by `node release`);
//! - `node/NAME`: a node's record (its `--node-address` and the blocks it claimed),
//!   written on its first write;
//! - `cursor/NAME/4|6`: the host address the node handed out last (round robin).
//!
//! Transactions are optimistic: a [`EtcdTxn`] records the revision of every key it
//! read and buffers its writes; the commit is one etcd txn that compares the revisions
//! and applies the writes only when nothing changed, else the closure runs again (within
//! `--wait`). A commit that etcd acknowledged is in a quorum's log.

mod blocks;
mod client;
mod lock;
mod tls;
mod watch;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use common::{Error, Kind, Result};

use super::Txn;
use crate::lease::Lease;

pub use blocks::allocate;
pub use client::Credentials;
use client::{b64, unb64, Client};
pub use tls::{Tls, TlsFiles};
pub use watch::render as render_route_set;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/ve-alloc";
/// The IPv4 block size (prefix length) unless `--block-size` says otherwise.
pub const DEFAULT_BLOCK_PREFIX: u8 = 26;

/// A parsed `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (or `etcd+tls://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    pub prefix: String,
    /// `etcd+tls://`: every endpoint is spoken to over TLS.
    pub tls: bool,
}

impl Spec {
    /// Parse an `etcd://` or `etcd+tls://` URL; None when `text` is not one at all.
    pub fn parse(text: &str) -> Option<std::result::Result<Spec, String>> {
        let (rest, tls) = match text.strip_prefix("etcd://") {
            Some(rest) => (rest, false),
            None => (text.strip_prefix("etcd+tls://")?, true),
        };
        Some(Self::parse_rest(rest, tls))
    }

    fn parse_rest(rest: &str, tls: bool) -> std::result::Result<Spec, String> {
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX.to_string()
        } else {
            prefix.to_string()
        };
        if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "the key prefix {prefix:?} has spaces or control characters"
            ));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| format!("endpoint {h:?} is not HOST:PORT"))?;
            let bracketed = host.starts_with('[') && host.ends_with(']');
            if host.is_empty()
                || (!bracketed && host.contains(':'))
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
            {
                return Err(format!("endpoint {h:?} has no valid host"));
            }
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("endpoint {h:?} has no valid port"))?;
            endpoints.push(h.to_string());
        }
        Ok(Spec {
            endpoints,
            prefix,
            tls,
        })
    }
}

/// What a range read returns ([`EtcdStore::range_txns`]).
#[derive(Clone, Copy, PartialEq)]
enum Only {
    Values,
    Keys,
    Count,
}

/// A lease as stored: the lease and the node holding it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    host_address: Option<std::net::Ipv4Addr>,
    local_address: Option<std::net::Ipv4Addr>,
    host_address6: Option<std::net::Ipv6Addr>,
    local_address6: Option<std::net::Ipv6Addr>,
    #[serde(rename = "static")]
    fixed: bool,
    node: String,
}

impl Record {
    fn new(l: &Lease, node: &str) -> Record {
        Record {
            name: l.name.clone(),
            host_address: l.host_address,
            local_address: l.local_address,
            host_address6: l.host_address6,
            local_address6: l.local_address6,
            fixed: l.fixed,
            node: node.to_string(),
        }
    }

    fn lease(&self) -> Lease {
        let mut l = Lease::new(&self.name);
        l.host_address = self.host_address;
        l.local_address = self.local_address;
        l.host_address6 = self.host_address6;
        l.local_address6 = self.local_address6;
        l.fixed = self.fixed;
        l
    }
}

/// This node, as other nodes see it, and the blocks it claimed (`4/HEX`, `6/HEX`): one
/// small read tells a node its blocks, however large the fleet.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct NodeRecord {
    address: Option<IpAddr>,
    #[serde(default)]
    blocks: Vec<String>,
}

/// One key and value as a range returned it.
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    mod_revision: i64,
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    node: String,
    node_address: Option<IpAddr>,
    /// Host bits of a block (the same number for IPv4 and IPv6).
    block_bits: u32,
    deadline: Instant,
    registered: bool,
    /// The name of this node's write lock on this host ([`lock`]).
    lock_name: String,
    /// Reads are served by the member asked, from what it applied so far, without
    /// asking the leader (etcd's serializable reads): the first attempt of a write
    /// ([`EtcdStore::write`]).
    serializable: bool,
    /// A request of this attempt failed (etcd's answer, not a decision on what was read).
    failed: bool,
}

impl EtcdStore {
    /// A store at `spec` for node `node`; every request gives up when `wait` has passed
    /// since now. Nothing is contacted until first use.
    pub fn new(
        spec: &Spec,
        node: &str,
        node_address: Option<IpAddr>,
        block_prefix: u8,
        auth: Option<Credentials>,
        tls: Option<Tls>,
        wait: Duration,
    ) -> EtcdStore {
        let deadline = Instant::now() + wait;
        EtcdStore {
            client: Client::new(spec.endpoints.clone(), auth, tls, deadline),
            prefix: spec.prefix.clone(),
            node: node.to_string(),
            node_address,
            block_bits: 32 - u32::from(block_prefix),
            deadline,
            registered: false,
            lock_name: lock::name(&spec.endpoints, &spec.prefix, node),
            serializable: false,
            failed: false,
        }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.prefix).into_bytes()
    }

    fn lease_key(&self, name: &str) -> Vec<u8> {
        self.key(&format!("lease/{name}"))
    }

    fn node_key(&self, node: &str) -> Vec<u8> {
        self.key(&format!("node/{node}"))
    }

    fn addr_key(&self, a: IpAddr) -> Vec<u8> {
        let (fam, hex) = hex_of(a);
        self.key(&format!("addr/{fam}/{hex}"))
    }

    /// A gateway request; a failure is noted for [`EtcdStore::write`].
    fn call(&mut self, path: &str, body: &Value) -> Result<Value> {
        let r = self.client.call(path, body);
        self.failed |= r.is_err();
        r
    }

    /// `req`, a range request, served as [`EtcdStore::serializable`] says.
    fn range_request(&self, mut req: Value) -> Value {
        if self.serializable {
            req["serializable"] = Value::Bool(true);
        }
        req
    }

    fn range(&mut self, key: &[u8], end: Option<&[u8]>) -> Result<(i64, Vec<Kv>)> {
        let mut req = json!({ "key": b64(key) });
        if let Some(end) = end {
            req["range_end"] = json!(b64(end));
        }
        let v = self.call("/v3/kv/range", &self.range_request(req))?;
        Ok((revision(&v), kvs(&v)?))
    }

    /// `base` followed by the fixed-width hex of `a` (a block or address key).
    fn addr_hex_key(&self, base: &[u8], a: IpAddr) -> Vec<u8> {
        let mut k = base.to_vec();
        k.extend_from_slice(hex_of(a).1.as_bytes());
        k
    }

    /// At most `limit` keys (no values) from `key` up to `end`, in order.
    fn keys_page(&mut self, key: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let req =
            json!({"key": b64(key), "range_end": b64(end), "limit": limit, "keys_only": true});
        let v = self.call("/v3/kv/range", &self.range_request(req))?;
        Ok(kvs(&v)?.into_iter().map(|kv| kv.key).collect())
    }

    /// How many keys there are from `key` up to `end`.
    fn count(&mut self, key: &[u8], end: &[u8]) -> Result<i64> {
        let req = json!({"key": b64(key), "range_end": b64(end), "count_only": true});
        let v = self.call("/v3/kv/range", &self.range_request(req))?;
        Ok(int(v.get("count")))
    }

    /// How many keys each of several ranges holds, in one round trip per 100 ranges.
    fn counts(&mut self, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<i64>> {
        Ok(self
            .range_txns(ranges, Only::Count, 0)?
            .iter()
            .map(|(_, r)| int(r.get("count")))
            .collect())
    }

    /// Several ranges read at one revision, in one round trip (one per 100 ranges: etcd
    /// allows 128 operations per transaction).
    fn ranges(&mut self, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Vec<Kv>>> {
        self.range_txns(ranges, Only::Values, 0)?
            .iter()
            .map(|(_, r)| kvs(r))
            .collect()
    }

    /// [`Self::ranges`] with only the keys (empty values) of the first `keys_only`
    /// ranges: the held addresses of a block need no names, and the answer is smaller.
    fn ranges_keys_first(
        &mut self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        keys_only: usize,
    ) -> Result<Vec<Vec<Kv>>> {
        self.range_txns(ranges, Only::Keys, keys_only)?
            .iter()
            .map(|(_, r)| kvs(r))
            .collect()
    }

    /// The `response_range` of each range, read by transactions of 100 ranges each;
    /// with `only` other than [`Only::Values`], the first `first` ranges (every range
    /// for [`Only::Count`]) give only their keys or counts.
    fn range_txns(
        &mut self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        only: Only,
        first: usize,
    ) -> Result<Vec<(i64, Value)>> {
        let mut out = Vec::with_capacity(ranges.len());
        for (c, chunk) in ranges.chunks(100).enumerate() {
            let ops: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (k, e))| {
                    let mut r = json!({"key": b64(k), "range_end": b64(e)});
                    match only {
                        Only::Count => r["count_only"] = Value::Bool(true),
                        Only::Keys if c * 100 + i < first => {
                            r["keys_only"] = Value::Bool(true);
                        }
                        _ => {}
                    }
                    // etcd serves a read-only txn without the leader only when every
                    // range in it is serializable.
                    json!({ "request_range": self.range_request(r) })
                })
                .collect();
            let v = self.call("/v3/kv/txn", &json!({"compare": [], "success": ops}))?;
            let empty = vec![];
            let resp = v
                .get("responses")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            if resp.len() != chunk.len() {
                return Err(Error::new(
                    Kind::Io,
                    "etcd answered a different number of ranges",
                ));
            }
            let rev = revision(&v);
            out.extend(
                resp.iter()
                    .map(|r| (rev, r.get("response_range").cloned().unwrap_or(Value::Null))),
            );
        }
        Ok(out)
    }

    /// Run `f` in a read-only view (each read linearizable: `show`, `list`, `routes`
    /// never print what a lagging member still believes).
    pub fn read<T>(&mut self, f: impl FnOnce(&mut EtcdTxn) -> Result<T>) -> Result<T> {
        self.serializable = false;
        let mut tx = EtcdTxn::new(self, 0);
        f(&mut tx)
    }

    /// Run `f` in a transaction, again while another writer changed what it read, until
    /// `--wait` has passed (then exit 75). The time is checked only after a race lost on
    /// a linearizable view: a serializable first attempt is always followed by a
    /// linearizable one when it did not commit, so `--wait 0` decides as SQLite does.
    ///
    /// The writes of one node's processes on this host take turns ([`lock`]), waiting
    /// for their turn at most one request timeout and half the time left; lost races
    /// are retried after a random pause that grows with each loss, so that racing
    /// writers drift apart.
    ///
    /// The first attempt reads serializably: the member asked answers from what it has
    /// applied, without a round to the followers (a linearizable read costs etcd about
    /// as much CPU as the commit). Its view may be stale, so it counts only when its
    /// commit succeeds, and that commit compares everything the outcome rests on: the
    /// mod revision of every key read (an address chosen, absent; the lease; the node
    /// record), each lease range listed, and the owner of each block allocated from. An
    /// attempt that would end otherwise (an error, nothing to write, a block to claim)
    /// starts again reading linearizably, as does one whose commit lost (after a block
    /// claimed, serializably again: the member asked applied the claim). What a stale
    /// first attempt reads without a compare only steers the choice: the cursor (which
    /// free pair comes next), the held addresses and counts of the node's blocks (a
    /// pair wrongly held is skipped; one wrongly free fails its compare). A node's
    /// processes ask the members in the same order and a member answers a write once it
    /// applied it, so the first attempt normally sees the node's own last write.
    pub fn write<T>(&mut self, f: impl FnMut(&mut EtcdTxn) -> Result<T>) -> Result<T> {
        let r = self.attempts(f);
        // Reads outside a write (`node release` lists the blocks) are linearizable.
        self.serializable = false;
        r
    }

    /// [`Self::write`]'s attempts.
    fn attempts<T>(&mut self, mut f: impl FnMut(&mut EtcdTxn) -> Result<T>) -> Result<T> {
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        let _turn = lock::acquire(
            &self.lock_name,
            now + self.client.request_timeout().min(left / 2),
        );
        // Only lost races count: a restart after claiming a block is no conflict, nor
        // is a loss on a serializable read (the member may have lagged).
        let mut conflicts = 0u32;
        let mut serializable = true;
        // Blocks won in this write: two (one per family) are progress; a third means
        // writers of this node racing without their turn, which `--wait` bounds like a
        // lost race.
        let mut claims = 0u32;
        loop {
            self.serializable = serializable;
            self.failed = false;
            let mut tx = EtcdTxn::new(self, conflicts);
            let r = f(&mut tx);
            let (failed, nothing, claimed) = (tx.store.failed, tx.writes.is_empty(), tx.claimed);
            match r {
                _ if tx.restart => {}
                // Decided on a view that may be stale: ask again.
                Err(_) if serializable && !failed => {}
                Ok(_) if serializable && nothing => {}
                Err(e) => return Err(e),
                Ok(v) => {
                    if tx.commit()? {
                        return Ok(v);
                    }
                    if !serializable {
                        conflicts += 1;
                        std::thread::sleep(
                            backoff(conflicts)
                                .min(self.deadline.saturating_duration_since(Instant::now())),
                        );
                    }
                }
            }
            // `--wait` bounds the wait for other writers: an attempt on a view that may
            // be stale is always rechecked linearizably, and a block this node won is
            // progress; only a race lost on a linearizable view (a commit or a claim)
            // ends the command once the time is up.
            claims += u32::from(claimed);
            let lost = !serializable && (!claimed || claims > 2);
            serializable = claimed;
            if lost && Instant::now() >= self.deadline {
                return Err(Error::new(
                    Kind::TempFail,
                    "etcd: other writers kept changing the same keys for longer than --wait",
                ));
            }
            log::debug!("etcd transaction started again ({conflicts} lost races)");
        }
    }
}

impl EtcdStore {
    /// `node release NAME`: release the node's dynamic leases (one transaction each),
    /// delete its blocks (each only while still its own), then its record and cursors.
    /// `released` is called with each lease as soon as its release is committed, so a
    /// failure later still reports it.
    pub fn release_node(&mut self, node: &str, mut released: impl FnMut(&Lease)) -> Result<()> {
        let leases = self.read(|tx| tx.all_with_nodes())?;
        let mut gone = 0usize;
        for (l, n) in leases {
            if n != node || l.fixed {
                continue;
            }
            let removed = self.write(|tx| match tx.record(&l.name)? {
                Some(r) if r.node == node && r.lease() == l => tx.remove(&l.name),
                _ => Ok(false),
            })?;
            if removed {
                released(&l);
                gone += 1;
            }
        }
        let mut blocks = Vec::new();
        for fam in ['4', '6'] {
            let base = self.key(&format!("block/{fam}/"));
            let (_, kvs) = self.range(&base, Some(&prefix_end(&base)))?;
            blocks.extend(kvs.into_iter().filter(|kv| kv.value == node.as_bytes()));
        }
        // etcd allows 128 operations per transaction.
        for chunk in blocks.chunks(100) {
            let compare: Vec<Value> = chunk
                .iter()
                .map(|kv| {
                    json!({"key": b64(&kv.key), "target": "VALUE", "result": "EQUAL",
                           "value": b64(node.as_bytes())})
                })
                .collect();
            let mut delete: Vec<Value> = chunk
                .iter()
                .map(|kv| json!({"request_delete_range": {"key": b64(&kv.key)}}))
                .collect();
            // The claimed-blocks hints no longer hold: the next claim searches from the
            // start of the pool and finds the freed blocks.
            for fam in ['4', '6'] {
                let hint = self.key(&format!("meta/claimed/{fam}"));
                delete.push(json!({"request_delete_range": {"key": b64(&hint)}}));
            }
            // A block another run deleted meanwhile fails the compare: nothing to do.
            self.client.call(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": delete, "failure": []}),
            )?;
        }
        let cursors = self.key(&format!("cursor/{node}/"));
        let record = self.node_key(node);
        let mut record_end = record.clone();
        record_end.push(0);
        self.client.call(
            "/v3/kv/txn",
            &json!({"compare": [], "success": [
                {"request_delete_range": {"key": b64(&record), "range_end": b64(&record_end)}},
                {"request_delete_range": {"key": b64(&cursors), "range_end": b64(&prefix_end(&cursors))}},
            ], "failure": []}),
        )?;
        log::info!(
            "node {node}: released {gone} leases and {} blocks",
            blocks.len()
        );
        Ok(())
    }
}

/// etcd's default `--max-txn-ops`: the most compares, and the most writes, one
/// transaction may carry.
pub const MAX_TXN_OPS: usize = 128;
/// The most blocks one transaction drops from the node's record because another node
/// owns them now (each adds a compare); more are skipped unused and dropped by a later
/// transaction.
pub const MAX_LOST_BLOCKS: usize = 8;

impl EtcdTxn<'_> {
    /// The operations of the larger side of the commit as it stands (its compares, with
    /// room for the owners of the lost blocks it may still find, or its writes, with the
    /// node record a first write adds), to keep a transaction of many names within
    /// [`MAX_TXN_OPS`].
    pub fn ops(&self) -> usize {
        let hint = self.store.key(&format!("cursor/{}/", self.store.node));
        let compares = self.reads.keys().filter(|k| !k.starts_with(&hint)).count()
            + self.value_checks.len()
            + self.range_reads.len()
            + MAX_LOST_BLOCKS.saturating_sub(self.lost_blocks);
        compares.max(self.writes.len() + 1)
    }
}

/// A block of another node and where to route it (`ve-alloc routes`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Route {
    /// The block, as a network (`10.233.0.64/26`).
    pub block: String,
    pub via: IpAddr,
    pub node: String,
}

impl EtcdStore {
    /// The blocks of every other node that has a node address, ordered by family and
    /// address; blocks of nodes without one, or of the other family than the node's
    /// address (an IPv6 block of a node known by its IPv4 address), are skipped with a
    /// warning (nothing to route them to).
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let (_, routes) = list_routes(&mut self.client, &self.prefix, &self.node, self.block_bits)?;
        Ok(routes)
    }
}

/// The routes `node` needs, as of the revision returned: the node records and both
/// families' blocks read in one transaction, so at one revision (the one a watch
/// continues from).
fn list_routes(
    client: &mut Client,
    prefix: &str,
    node: &str,
    block_bits: u32,
) -> Result<(i64, Vec<Route>)> {
    let key = |rest: &str| format!("{prefix}/{rest}").into_bytes();
    let bases = [key("node/"), key("block/4/"), key("block/6/")];
    let ops: Vec<Value> = bases
        .iter()
        .map(|k| json!({"request_range": {"key": b64(k), "range_end": b64(&prefix_end(k))}}))
        .collect();
    // A read-only txn needs no compare (proto3 JSON: an absent list is empty). The
    // stale-record test drops, on the wire, the one request of a release with an empty one.
    let v = client.call("/v3/kv/txn", &json!({ "success": ops }))?;
    let rev = revision(&v);
    let empty = vec![];
    let resp = v
        .get("responses")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut ranges = resp
        .iter()
        .map(|r| kvs(r.get("response_range").unwrap_or(&Value::Null)))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let mut via: HashMap<String, Option<IpAddr>> = HashMap::new();
    for kv in ranges.next().unwrap_or_default() {
        let r: NodeRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
        via.insert(
            String::from_utf8_lossy(&kv.key[bases[0].len()..]).into_owned(),
            r.address,
        );
    }
    let mut out = Vec::new();
    for ((fam, bits), base) in [('4', 32), ('6', 128)].into_iter().zip(&bases[1..]) {
        for kv in ranges.next().unwrap_or_default() {
            let owner = String::from_utf8_lossy(&kv.value).into_owned();
            if owner == node {
                continue;
            }
            let hex = String::from_utf8_lossy(&kv.key[base.len()..]).into_owned();
            let n = u128::from_str_radix(&hex, 16).map_err(|e| corrupt(&kv.key, e))?;
            let start: IpAddr = if fam == '4' {
                IpAddr::V4(u32::try_from(n).map_err(|e| corrupt(&kv.key, e))?.into())
            } else {
                IpAddr::V6(n.into())
            };
            let block = format!("{start}/{}", bits - block_bits);
            match via.get(&owner).copied().flatten() {
                Some(via) if via.is_ipv4() == start.is_ipv4() => out.push(Route {
                    block,
                    via,
                    node: owner,
                }),
                // A route needs a gateway of its own family.
                Some(via) => log::warn!(
                    "node {owner}'s node address {via} is of the other family; not routing {block}"
                ),
                None => log::warn!("node {owner} has no node address; not routing {block}"),
            }
        }
    }
    Ok((rev, out))
}

/// The pause before the attempt after the `n`th lost race: uniformly random below
/// 1 ms, 2 ms, 4 ms, ... up to 32 ms ("full jitter").
fn backoff(n: u32) -> Duration {
    let cap = 1000u64 << n.saturating_sub(1).min(5);
    Duration::from_micros(jitter() % cap)
}

/// A number that differs between processes and calls (no randomness needed beyond that).
fn jitter() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = (u64::from(std::process::id()) << 32) ^ u64::from(nanos);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn revision(v: &Value) -> i64 {
    int(v.get("header").and_then(|h| h.get("revision")))
}

/// A proto3 int64 as the gateway writes it (a string; absent when 0).
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kvs(v: &Value) -> Result<Vec<Kv>> {
    let empty = vec![];
    v.get("kvs")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .map(|kv| {
            let field = |k: &str| kv.get(k).and_then(Value::as_str).unwrap_or("");
            Ok(Kv {
                key: unb64(field("key"))?,
                value: unb64(field("value"))?,
                mod_revision: int(kv.get("mod_revision")),
            })
        })
        .collect()
}

/// The first key after every key that starts with `key`.
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The family digit and fixed-width hex of an address (keys sort as addresses do).
fn hex_of(a: IpAddr) -> (char, String) {
    match a {
        IpAddr::V4(a) => ('4', format!("{:08x}", u32::from(a))),
        IpAddr::V6(a) => ('6', format!("{:032x}", u128::from(a))),
    }
}

fn corrupt(key: &[u8], what: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::Io,
        format!(
            "etcd store: key {} is corrupt: {what}",
            String::from_utf8_lossy(key)
        ),
    )
}

/// One optimistic transaction on an [`EtcdStore`].
pub struct EtcdTxn<'a> {
    store: &'a mut EtcdStore,
    /// The revision each key read had when read (0: absent).
    reads: HashMap<Vec<u8>, i64>,
    /// Key ranges read whole: no key in them may change after the revision read.
    range_reads: Vec<(Vec<u8>, Vec<u8>, i64)>,
    /// Keys that must still hold these values at commit (the blocks allocated from).
    value_checks: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Values read (None: absent).
    cache: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Values read ahead ([`Self::prefetch`]) with their revision, not yet used: a key
    /// moves to `cache` and `reads` (compared at commit) only once the transaction reads
    /// it, so names a transaction leaves out add no compares.
    ahead: HashMap<Vec<u8>, (Option<Vec<u8>>, i64)>,
    /// Lease-name ranges read ahead ([`Self::prefetch_ifname_prefixes`]) by start key:
    /// the revision and the keys; compared only once used.
    prefixes: HashMap<Vec<u8>, (i64, Vec<Vec<u8>>)>,
    /// Blocks found listed in the record but not this node's, whose owner is compared at
    /// commit (at most [`MAX_LOST_BLOCKS`] per transaction).
    pub(super) lost_blocks: usize,
    /// The held address keys of each block read (by family and start), so that the
    /// names of one `alloc NAME...` read a block once; this transaction's own writes
    /// are laid over them where used.
    blocks_read: HashMap<(bool, u128), HashSet<Vec<u8>>>,
    /// Blocks never to allocate from in this transaction: every address was held when
    /// counted, or the block is not this node's any more.
    blocks_full: HashSet<(bool, u128)>,
    /// Buffered writes (None: delete).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Run the closure again from the start (a block was claimed meanwhile).
    restart: bool,
    /// This attempt claimed a block, through the member asked, which answered once it
    /// applied the claim: the next attempt may read serializably again.
    claimed: bool,
    attempt: u32,
    /// `all` returns only this node's leases (`gc`).
    only_this_node: bool,
}

impl<'a> EtcdTxn<'a> {
    fn new(store: &'a mut EtcdStore, attempt: u32) -> Self {
        EtcdTxn {
            store,
            reads: HashMap::new(),
            range_reads: Vec::new(),
            value_checks: BTreeMap::new(),
            cache: HashMap::new(),
            ahead: HashMap::new(),
            prefixes: HashMap::new(),
            lost_blocks: 0,
            blocks_read: HashMap::new(),
            blocks_full: HashSet::new(),
            writes: BTreeMap::new(),
            restart: false,
            claimed: false,
            attempt,
            only_this_node: false,
        }
    }

    /// Limit `all` to the leases of this node.
    pub fn only_this_node(&mut self) {
        self.only_this_node = true;
    }

    fn read_key(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if let Some(v) = self.cache.get(key) {
            return Ok(v.clone());
        }
        if let Some((v, rev)) = self.ahead.remove(key) {
            self.saw(key, v.clone(), rev);
            return Ok(v);
        }
        let (_, kvs) = self.store.range(key, None)?;
        let found = kvs.into_iter().find(|kv| kv.key == key);
        self.reads
            .insert(key.to_vec(), found.as_ref().map_or(0, |kv| kv.mod_revision));
        let v = found.map(|kv| kv.value);
        self.cache.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    /// Read `keys` in one round trip (one per 100; those not read yet), for
    /// [`Self::read_key`] to use.
    fn prefetch(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        let want: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .filter(|k| {
                !self.cache.contains_key(*k)
                    && !self.writes.contains_key(*k)
                    && !self.ahead.contains_key(*k)
            })
            .map(|k| {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), end)
            })
            .collect();
        let got = self.store.ranges(&want)?;
        for ((k, _), kvs) in want.into_iter().zip(got) {
            let v = match kvs.into_iter().find(|kv| kv.key == k) {
                Some(kv) => (Some(kv.value), kv.mod_revision),
                None => (None, 0),
            };
            self.ahead.insert(k, v);
        }
        Ok(())
    }

    /// Read what `alloc::put_checked` reads of each of `leases` (its lease and its
    /// addresses' holders) in one round trip per 100 keys, and the names that could share
    /// its interface name in one more.
    pub fn prefetch_for_import(&mut self, leases: &[Lease]) -> Result<()> {
        let mut keys = Vec::with_capacity(leases.len() * 5);
        for l in leases {
            keys.push(self.store.lease_key(&l.name));
            keys.extend(l.addresses().into_iter().map(|a| self.store.addr_key(a)));
        }
        self.prefetch(&keys)?;
        let names: Vec<&str> = leases.iter().map(|l| l.name.as_str()).collect();
        self.prefetch_ifname_prefixes(&names)
    }

    /// Read the lease names that could share an interface name with each of `names`
    /// (see `alloc::check_ifname`) in one round trip (one per 100 ranges), for
    /// [`Txn::names_with_prefix`] to use; not for a name whose lease was read ahead and
    /// exists (no new lease, no check).
    pub fn prefetch_ifname_prefixes(&mut self, names: &[&str]) -> Result<()> {
        let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for n in names {
            let Some(kept) = common::name::kept_prefix(common::name::HOST_PREFIX, n) else {
                continue;
            };
            let lease = self.store.lease_key(n);
            if matches!(self.ahead.get(&lease), Some((Some(_), _)))
                || matches!(self.cache.get(&lease), Some(Some(_)))
            {
                continue;
            }
            let start = self.store.lease_key(kept);
            if !self.prefixes.contains_key(&start) && !want.iter().any(|(k, _)| *k == start) {
                let end = prefix_end(&start);
                want.push((start, end));
            }
        }
        let got = self.store.range_txns(&want, Only::Keys, want.len())?;
        for ((start, _), (rev, r)) in want.into_iter().zip(got) {
            let keys = kvs(&r)?.into_iter().map(|kv| kv.key).collect();
            self.prefixes.insert(start, (rev, keys));
        }
        Ok(())
    }

    /// This node's record as stored (None before its first write).
    fn node_record(&mut self) -> Result<Option<NodeRecord>> {
        let key = self.store.node_key(&self.store.node.clone());
        self.read_key(&key)?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    /// Note a key as read at `rev` with `value` without asking etcd (it came in a range).
    fn saw(&mut self, key: &[u8], value: Option<Vec<u8>>, rev: i64) {
        if !self.cache.contains_key(key) {
            self.cache.insert(key.to_vec(), value);
            self.reads.insert(key.to_vec(), rev);
        }
    }

    fn record(&mut self, name: &str) -> Result<Option<Record>> {
        let key = self.store.lease_key(name);
        self.read_key(&key)?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    /// Every lease with its node, ordered by name; with [`Self::only_this_node`], this
    /// node's only.
    pub fn all_with_nodes(&mut self) -> Result<Vec<(Lease, String)>> {
        let start = self.store.key("lease/");
        let end = prefix_end(&start);
        let (_, kvs) = self.store.range(&start, Some(&end))?;
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for kv in kvs {
            self.saw(&kv.key, Some(kv.value.clone()), kv.mod_revision);
            map.insert(kv.key, kv.value);
        }
        for (k, w) in self.writes.range(start..end) {
            match w {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let r: Record = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            if !self.only_this_node || r.node == self.store.node {
                out.push((r.lease(), r.node));
            }
        }
        Ok(out)
    }

    /// Commit the buffered writes; false when another writer got there first.
    fn commit(&mut self) -> Result<bool> {
        if self.writes.is_empty() {
            return Ok(true);
        }
        if !self.store.registered {
            let mut record = self.node_record()?;
            let address = self.store.node_address;
            // A command run without --node-address keeps the address recorded: other
            // nodes route to it (`routes`).
            if record
                .as_ref()
                .is_none_or(|r| address.is_some() && r.address != address)
            {
                let mut r = record.take().unwrap_or_default();
                r.address = address;
                let v = serde_json::to_vec(&r).map_err(|e| Error::internal(e.to_string()))?;
                let key = self.store.node_key(&self.store.node.clone());
                self.writes.insert(key, Some(v));
            }
        }
        // The cursor is a hint, not a fact to check: comparing it would make every two
        // parallel allocations of one node conflict.
        let hint = self.store.key(&format!("cursor/{}/", self.store.node));
        let mut compare: Vec<Value> = self
            .reads
            .iter()
            .filter(|(k, _)| !k.starts_with(&hint))
            .map(|(k, rev)| {
                json!({"key": b64(k), "target": "MOD", "result": "EQUAL",
                       "mod_revision": rev.to_string()})
            })
            .collect();
        compare.extend(self.value_checks.iter().map(
            |(k, v)| json!({"key": b64(k), "target": "VALUE", "result": "EQUAL", "value": b64(v)}),
        ));
        compare.extend(self.range_reads.iter().map(|(k, end, rev)| {
            json!({"key": b64(k), "range_end": b64(end), "target": "MOD", "result": "LESS",
                   "mod_revision": (rev + 1).to_string()})
        }));
        let success: Vec<Value> = self
            .writes
            .iter()
            .map(|(k, w)| match w {
                Some(v) => json!({"request_put": {"key": b64(k), "value": b64(v)}}),
                None => json!({"request_delete_range": {"key": b64(k)}}),
            })
            .collect();
        let v = self.store.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": []}),
        )?;
        let ok = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        if ok {
            self.store.registered = true;
        }
        Ok(ok)
    }
}

impl Txn for EtcdTxn<'_> {
    fn get(&mut self, name: &str) -> Result<Option<Lease>> {
        Ok(self.record(name)?.map(|r| r.lease()))
    }

    fn all(&mut self) -> Result<Vec<Lease>> {
        Ok(self.all_with_nodes()?.into_iter().map(|(l, _)| l).collect())
    }

    fn names_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        let base = self.store.key("lease/");
        let start = self.store.lease_key(prefix);
        let end = prefix_end(&start);
        let (rev, stored) = match self.prefixes.get(&start) {
            Some((rev, keys)) => (*rev, keys.clone()),
            None => {
                let (rev, kvs) = self.store.range(&start, Some(&end))?;
                (rev, kvs.into_iter().map(|kv| kv.key).collect())
            }
        };
        if !self
            .range_reads
            .iter()
            .any(|(k, e, r)| *k == start && *e == end && *r == rev)
        {
            self.range_reads.push((start.clone(), end.clone(), rev));
        }
        let mut keys: BTreeMap<Vec<u8>, ()> = stored.into_iter().map(|k| (k, ())).collect();
        for (k, w) in self.writes.range(start..end) {
            match w {
                Some(_) => keys.insert(k.clone(), ()),
                None => keys.remove(k),
            };
        }
        Ok(keys
            .into_keys()
            .map(|k| String::from_utf8_lossy(&k[base.len()..]).into_owned())
            .collect())
    }

    fn holder(&mut self, addr: IpAddr) -> Result<Option<String>> {
        let key = self.store.addr_key(addr);
        Ok(self
            .read_key(&key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn put(&mut self, lease: &Lease) -> Result<()> {
        let old = self.record(&lease.name)?;
        let node = old
            .as_ref()
            .map_or_else(|| self.store.node.clone(), |r| r.node.clone());
        if let Some(old) = &old {
            for a in old.lease().addresses() {
                let k = self.store.addr_key(a);
                self.writes.insert(k, None);
            }
        }
        for a in lease.addresses() {
            if let Some(other) = self.holder(a)?.filter(|h| *h != lease.name) {
                return Err(Error::internal(format!("{a} already held by {other}")));
            }
            let k = self.store.addr_key(a);
            self.writes.insert(k, Some(lease.name.clone().into_bytes()));
        }
        let v = serde_json::to_vec(&Record::new(lease, &node))
            .map_err(|e| Error::internal(e.to_string()))?;
        let k = self.store.lease_key(&lease.name);
        self.writes.insert(k, Some(v));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<bool> {
        let Some(old) = self.record(name)? else {
            return Ok(false);
        };
        for a in old.lease().addresses() {
            let k = self.store.addr_key(a);
            self.writes.insert(k, None);
        }
        let k = self.store.lease_key(name);
        self.writes.insert(k, None);
        Ok(true)
    }

    fn cursor(&mut self, v6: bool) -> Result<Option<IpAddr>> {
        let key = self.cursor_key(v6);
        Ok(self
            .read_key(&key)?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
    }

    fn set_cursor(&mut self, v6: bool, host: IpAddr) -> Result<()> {
        let key = self.cursor_key(v6);
        self.writes.insert(key, Some(host.to_string().into_bytes()));
        Ok(())
    }
}

impl EtcdTxn<'_> {
    fn cursor_key(&self, v6: bool) -> Vec<u8> {
        let node = &self.store.node;
        self.store
            .key(&format!("cursor/{node}/{}", if v6 { 6 } else { 4 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Spec::parse("etcd://10.0.0.1:2379,e2:2379/fleet/")
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoints, ["10.0.0.1:2379", "e2:2379"]);
        assert_eq!(s.prefix, "/fleet");
        let s = Spec::parse("etcd://[fd00::1]:2379").unwrap().unwrap();
        assert_eq!(
            (s.endpoints[0].as_str(), s.prefix.as_str()),
            ("[fd00::1]:2379", DEFAULT_PREFIX)
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://h:0",
            "etcd://h:x",
            "etcd://:1",
            "etcd://a:1,",
            "etcd://a b:1",
            "etcd://fd00::1:2379",
        ] {
            assert!(Spec::parse(bad).unwrap().is_err(), "{bad}");
        }
        assert!(!s.tls);
        let s = Spec::parse("etcd+tls://e1:2379,e2:2379").unwrap().unwrap();
        assert!(s.tls);
        assert_eq!(s.endpoints, ["e1:2379", "e2:2379"]);
        assert!(Spec::parse("etcd+tls://e1").unwrap().is_err());
        assert!(Spec::parse("/var/lib/x").is_none());
        assert!(Spec::parse("etcd:x").is_none());
    }

    #[test]
    fn keys_sort_as_addresses() {
        assert_eq!(
            hex_of("10.233.0.2".parse().unwrap()),
            ('4', "0ae90002".into())
        );
        assert_eq!(prefix_end(b"/p/lease/"), b"/p/lease0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
