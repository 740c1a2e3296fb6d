//! Allocation in per-node blocks: a node hands out pairs only from the blocks it
//! claimed, so nodes never write the same keys in the common case; it claims the next
//! free block (one compare-and-swap transaction) when its own are full.

use std::{collections::HashSet, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::json;

use common::{name, Error, Kind, Result};

use super::{b64, hex_of, prefix_end, EtcdTxn, NodeRecord};
use crate::{
    alloc::{self, Pools},
    lease::Lease,
    pool::Pool,
    store::Txn,
};

/// How many of the free pairs a retry spreads over, so that parallel allocators of one
/// node stop choosing the same pair.
const SPREAD: usize = 16;

/// The lease of `name`, allocating one from this node's blocks when it has none (an
/// existing dynamic lease gains an IPv6 pair once an IPv6 pool is configured), as
/// `alloc::allocate` does on one host.
pub fn allocate(tx: &mut EtcdTxn, pools: &Pools, name: &str) -> Result<Lease> {
    tx.prefetch_for_alloc(&[name])?;
    if let Some(mut lease) = tx.get(name)? {
        if let (Some(p6), None, false) = (pools.v6, lease.host_address6, lease.fixed) {
            let (h, l) = tx.block_pair(&p6)?;
            (lease.host_address6, lease.local_address6) = (Some(v6(h)?), Some(v6(l)?));
            tx.put(&lease)?;
            log::info!("{name}: added IPv6 pair {h}, {l}");
        }
        return Ok(lease);
    }
    alloc::check_ifname(tx, name, name::host_ifname)?;
    let mut lease = Lease::new(name);
    let (h, l) = tx.block_pair(&pools.v4)?;
    (lease.host_address, lease.local_address) = (Some(v4(h)?), Some(v4(l)?));
    if let Some(p6) = pools.v6 {
        let (h, l) = tx.block_pair(&p6)?;
        (lease.host_address6, lease.local_address6) = (Some(v6(h)?), Some(v6(l)?));
    }
    tx.put(&lease)?;
    log::info!("{name}: leased {h}, {l}");
    Ok(lease)
}

fn v4(a: IpAddr) -> Result<std::net::Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(Error::internal("IPv4 pool yielded IPv6")),
    }
}

fn v6(a: IpAddr) -> Result<std::net::Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Ok(a),
        IpAddr::V4(_) => Err(Error::internal("IPv6 pool yielded IPv4")),
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        // Only called with values inside an IPv4 pool.
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    }
}

impl EtcdTxn<'_> {
    /// Read the leases of `names`, this node's record and its cursors in one round trip
    /// (those not read yet in this transaction).
    pub fn prefetch_for_alloc(&mut self, names: &[&str]) -> Result<()> {
        let node = self.store.node.clone();
        let mut keys = vec![
            self.store.node_key(&node),
            self.cursor_key(false),
            self.cursor_key(true),
        ];
        keys.extend(names.iter().map(|n| self.store.lease_key(n)));
        self.prefetch(&keys)
    }

    /// A free pair of `pool` in one of this node's blocks (listed in its node record),
    /// its addresses recorded as read-absent (the commit fails if another writer takes
    /// them) and the block checked at commit to be still this node's. Claims a block and
    /// restarts the transaction when this node has no free pair.
    ///
    /// Each block's owner is read with its addresses (same round trip): a block the
    /// record lists but another node owns now, or nobody (a `node release` of this node
    /// cut off halfway, then the block claimed again), is never used and is dropped
    /// from the record in this transaction.
    fn block_pair(&mut self, pool: &Pool) -> Result<(IpAddr, IpAddr)> {
        let net = pool.net();
        let is6 = net.network().is_ipv6();
        let fam = if is6 { '6' } else { '4' };
        let size: u128 = 1 << self.store.block_bits;
        let (lo, hi) = (to_u128(net.network()), to_u128(net.broadcast()));
        let mut record = self.node_record()?.unwrap_or_default();
        let mut mine: Vec<u128> = Vec::new();
        for b in &record.blocks {
            let Some(hex) = b.strip_prefix(fam).and_then(|h| h.strip_prefix('/')) else {
                continue;
            };
            let start = u128::from_str_radix(hex, 16)
                .map_err(|e| super::corrupt(&self.store.node_key(&self.store.node.clone()), e))?;
            if start + size > lo && start <= hi {
                mine.push(start);
            }
        }
        mine.sort_unstable();
        mine.dedup();
        let cursor = self.cursor(is6)?.map(to_u128);
        // Round robin: the first free pair after the one handed out last, block by block
        // from the cursor's, wrapping; the blocks are read a few at a time, so a node
        // with room in its current block reads one block.
        let first = cursor
            .and_then(|c| mine.iter().position(|s| c < s + size))
            .unwrap_or(0);
        let order: Vec<u128> = (0..=mine.len())
            .filter_map(|k| mine.get((first + k) % mine.len().max(1)).copied())
            .collect();
        let block_key = |tx: &Self, start: u128| {
            tx.store
                .key(&format!("block/{fam}/{}", hex_of(from_u128(start, is6)).1))
        };
        let me = self.store.node.clone().into_bytes();
        let mut lost: HashSet<u128> = HashSet::new();
        // Lost too, but past the transaction's budget of compares: dropped from the
        // record only by a claim (which needs no compare of them, see below).
        let mut skipped: HashSet<u128> = HashSet::new();
        let mut free = Vec::new();
        let mut next = 0;
        let mut batch = 1;
        while free.is_empty() && next < order.len() {
            let chunk = &order[next..(next + batch).min(order.len())];
            let mut unread: Vec<u128> = chunk
                .iter()
                .filter(|start| {
                    !self.blocks_read.contains_key(&(is6, **start))
                        && !self.blocks_full.contains(&(is6, **start))
                })
                .copied()
                .collect();
            if batch > 1 && !unread.is_empty() {
                // Past the cursor's block, most blocks of a busy node are full: count
                // their held addresses first and read the keys of the others only.
                // The part of each block inside the pool, and how many addresses it has.
                let parts: Vec<(u128, u128)> = unread
                    .iter()
                    .map(|b| ((*b).max(lo), (b + size - 1).min(hi)))
                    .collect();
                let spans: Vec<(Vec<u8>, Vec<u8>)> = parts
                    .iter()
                    .map(|(a, z)| {
                        let last = self.store.addr_key(from_u128(*z, is6));
                        (self.store.addr_key(from_u128(*a, is6)), prefix_end(&last))
                    })
                    .collect();
                let counts = self.store.counts(&spans)?;
                let mut left = Vec::new();
                for ((b, (a, z)), n) in unread.into_iter().zip(parts).zip(counts) {
                    if u128::try_from(n).is_ok_and(|n| n > z - a) {
                        self.blocks_full.insert((is6, b));
                    } else {
                        left.push(b);
                    }
                }
                unread = left;
            }
            // The blocks' addresses, then their owner keys, in one round trip.
            let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = unread
                .iter()
                .map(|start| self.block_span(*start, size, is6))
                .collect();
            ranges.extend(unread.iter().map(|start| {
                let k = block_key(self, *start);
                let mut end = k.clone();
                end.push(0);
                (k, end)
            }));
            let mut got = self.store.ranges_keys_first(&ranges, unread.len())?;
            let owners = got.split_off(unread.len());
            for ((start, kvs), owner) in unread.iter().zip(got).zip(owners) {
                if owner.first().map(|kv| &kv.value) != Some(&me)
                    && self.lost_blocks >= super::MAX_LOST_BLOCKS
                {
                    // Not used; dropped from the record by a later transaction, so that
                    // this one stays within etcd's limit of compares.
                    self.blocks_full.insert((is6, *start));
                    skipped.insert(*start);
                    continue;
                }
                if owner.first().map(|kv| &kv.value) != Some(&me) {
                    self.lost_blocks += 1;
                    // Dropping it from the record rests on this owner: compared at
                    // commit (the block may have been read at an older revision than
                    // the record, from another member after a failover).
                    let key = block_key(self, *start);
                    match owner.first() {
                        Some(kv) => self.saw(&key, Some(kv.value.clone()), kv.mod_revision),
                        None => self.saw(&key, None, 0),
                    }
                    log::warn!(
                        "node {}: block {}/{} is listed as its own but is {}; not using it",
                        self.store.node,
                        from_u128(*start, is6),
                        if is6 { 128 } else { 32 } - self.store.block_bits,
                        owner.first().map_or("nobody's".to_string(), |kv| format!(
                            "node {}'s",
                            String::from_utf8_lossy(&kv.value)
                        ))
                    );
                    lost.insert(*start);
                    // Never used again in this transaction, as a full block is not.
                    self.blocks_full.insert((is6, *start));
                    continue;
                }
                self.blocks_read
                    .insert((is6, *start), kvs.into_iter().map(|kv| kv.key).collect());
            }
            let empty = HashSet::new();
            let held: HashSet<&Vec<u8>> = chunk
                .iter()
                .flat_map(|start| self.blocks_read.get(&(is6, *start)).unwrap_or(&empty))
                .collect();
            for (k, start) in chunk.iter().enumerate() {
                if self.blocks_full.contains(&(is6, *start)) {
                    continue;
                }
                // The cursor's block is visited twice: after the cursor, then (wrapped)
                // up to it.
                let pass = next + k;
                for a in (*start).max(lo)..=(start + size - 1).min(hi) {
                    let Some(i) = pool.index_of(from_u128(a, is6)) else {
                        continue;
                    };
                    let in_turn = match cursor {
                        Some(c) if pass == 0 => a > c,
                        Some(c) if pass == mine.len() => a <= c,
                        _ => pass < mine.len(),
                    };
                    if !in_turn {
                        continue;
                    }
                    let (h, l) = pool.pair(i);
                    let busy = |ip: IpAddr, tx: &Self| {
                        let k = tx.store.addr_key(ip);
                        match tx.writes.get(&k) {
                            Some(w) => w.is_some(),
                            None => held.contains(&k),
                        }
                    };
                    if !busy(h, self) && !busy(l, self) {
                        free.push((h, l, *start));
                    }
                }
            }
            next += chunk.len();
            batch *= 4;
        }
        if !lost.is_empty() {
            let fam_hex = |start: u128| format!("{fam}/{}", hex_of(from_u128(start, is6)).1);
            let gone: HashSet<String> = lost.iter().map(|s| fam_hex(*s)).collect();
            record.blocks.retain(|b| !gone.contains(b));
            let v = serde_json::to_vec(&record).map_err(|e| Error::internal(e.to_string()))?;
            let nkey = self.store.node_key(&self.store.node.clone());
            self.writes.insert(nkey, Some(v));
        }
        if free.is_empty() {
            // A claim is a write of its own, not part of the commit: it is decided on a
            // linearizable view only (a stale one may show a block full that is not).
            if !self.store.serializable {
                // The claim compares the node's record, not the owners: every block
                // found lost on this linearizable view goes, as only this node's own
                // claim (which changes the record) could make one its own again.
                let fam_hex = |start: u128| format!("{fam}/{}", hex_of(from_u128(start, is6)).1);
                let gone: HashSet<String> = skipped.iter().map(|s| fam_hex(*s)).collect();
                record.blocks.retain(|b| !gone.contains(b));
                self.claim(pool, &record, is6, size)?;
            }
            self.restart = true;
            return Err(Error::new(
                Kind::Raced,
                "claimed a new block; starting again",
            ));
        }
        let spread = if self.attempt == 0 {
            0
        } else {
            (std::process::id() as usize + self.attempt as usize) % free.len().min(SPREAD)
        };
        let (h, l, block) = free[spread];
        for a in [h, l] {
            let k = self.store.addr_key(a);
            self.saw(&k, None, 0);
        }
        let bkey = self
            .store
            .key(&format!("block/{fam}/{}", hex_of(from_u128(block, is6)).1));
        self.value_checks
            .insert(bkey, self.store.node.clone().into_bytes());
        self.set_cursor(is6, h)?;
        Ok((h, l))
    }

    /// Claim the first unclaimed block of `pool` for this node in one compare-and-swap
    /// transaction, which also registers the node, adds the block to its record and
    /// fixes the fleet's block size. A lost race is no error: the caller starts again and
    /// sees the new owner.
    fn claim(&mut self, pool: &Pool, record: &NodeRecord, is6: bool, size: u128) -> Result<()> {
        let lo = to_u128(pool.net().network());
        let fam = if is6 { '6' } else { '4' };
        let bits = self.store.block_bits.to_string();
        let meta = self.store.key(&format!("meta/block-bits/{fam}"));
        let block_base = self.store.key(&format!("block/{fam}/"));
        let nkey = self.store.node_key(&self.store.node.clone());
        let node_rev = self.reads.get(&nkey).copied().unwrap_or(0);
        let hint_key = self.store.key(&format!("meta/claimed/{fam}"));
        let mut got = self.store.ranges(&[
            (meta.clone(), key_end(&meta)),
            (hint_key.clone(), key_end(&hint_key)),
        ])?;
        let (m, h) = (got.remove(0), got.remove(0));
        let meta_rev = match m.first() {
            Some(kv) if kv.value != bits.as_bytes() => {
                return Err(Error::config(format!(
                "etcd store: the fleet's blocks have {} host bits, but --block-size gives {bits}",
                String::from_utf8_lossy(&kv.value)
            )))
            }
            Some(kv) => kv.mod_revision,
            None => 0,
        };
        let first = lo - lo % size;
        // Every block from `from` up to `to` is claimed: the search starts at `to`
        // rather than reading every claimed block. The hint is compared at commit, so
        // claims keep it true; `node release` deletes it with the blocks it frees.
        let hint_rev = h.first().map_or(0, |kv| kv.mod_revision);
        let hint = h
            .first()
            .and_then(|kv| serde_json::from_slice::<Claimed>(&kv.value).ok())
            .and_then(|c| Some((parse_hex(&c.from)?, parse_hex(&c.to)?)))
            .filter(|(from, to)| *from <= first && first <= *to);
        let from = hint.map_or(first, |(from, _)| from);
        let mut found = self.first_free_block(
            &block_base,
            pool,
            is6,
            size,
            hint.map_or(first, |(_, to)| to),
        )?;
        if found.0.is_none() && hint.is_some() {
            // Never trust a hint for "exhausted": look at every block once.
            found = self.first_free_block(&block_base, pool, is6, size, first)?;
        }
        let (block, claimed_to) = match found {
            (Some(b), gap) => (b, gap.unwrap_or(b)),
            (None, _) => {
                let n = self.store.count(&block_base, &prefix_end(&block_base))?;
                return Err(Error::new(
                    Kind::CantCreate,
                    format!(
                        "address pool {pool} is exhausted for node {}: its blocks are full and \
                         every other block is claimed ({n} blocks in the fleet)",
                        self.store.node,
                    ),
                ));
            }
        };
        let bkey = self
            .store
            .key(&format!("block/{fam}/{}", hex_of(from_u128(block, is6)).1));
        // After this claim, every block from `from` up to the first unclaimed one the
        // search passed (or the one after this block) is claimed.
        let to = if claimed_to == block {
            block.saturating_add(size)
        } else {
            claimed_to
        };
        let hint = serde_json::to_vec(&Claimed {
            from: format!("{from:x}"),
            to: format!("{to:x}"),
        })
        .map_err(|e| Error::internal(e.to_string()))?;
        let mut record = NodeRecord {
            address: self.store.node_address,
            blocks: record.blocks.clone(),
        };
        record
            .blocks
            .push(format!("{fam}/{}", hex_of(from_u128(block, is6)).1));
        let record = serde_json::to_vec(&record).map_err(|e| Error::internal(e.to_string()))?;
        let cmp = |k: &[u8], rev: i64| json!({"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()});
        let put = |k: &[u8], v: &[u8]| json!({"request_put": {"key": b64(k), "value": b64(v)}});
        // Comparing the node's record serialises the claims of one node's parallel
        // allocators: one claims, the others see its block when they start again.
        let body = json!({
            "compare": [
                cmp(&bkey, 0),
                cmp(&nkey, node_rev),
                cmp(&meta, meta_rev),
                cmp(&hint_key, hint_rev),
            ],
            "success": [
                put(&bkey, self.store.node.as_bytes()),
                put(&nkey, &record),
                put(&meta, bits.as_bytes()),
                put(&hint_key, &hint),
            ],
            "failure": [],
        });
        let v = self.store.call("/v3/kv/txn", &body)?;
        if v.get("succeeded").and_then(serde_json::Value::as_bool) == Some(true) {
            self.store.registered = true;
            self.claimed = true;
            log::info!(
                "node {} claimed block {}/{}",
                self.store.node,
                from_u128(block, is6),
                if is6 { 128 } else { 32 } - self.store.block_bits
            );
        }
        Ok(())
    }
}

/// The claimed-blocks hint (`meta/claimed/4|6`): every block starting from `from` up
/// to, not including, `to` (hex) is claimed.
#[derive(Serialize, Deserialize)]
struct Claimed {
    from: String,
    to: String,
}

fn parse_hex(h: &str) -> Option<u128> {
    u128::from_str_radix(h, 16).ok()
}

/// The end of a range holding only `key`.
fn key_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    end.push(0);
    end
}

/// Claimed block keys read per round trip while looking for a free block.
const PAGE: usize = 64;

impl EtcdTxn<'_> {
    /// The range of address keys of the block starting at `start`.
    fn block_span(&self, start: u128, size: u128, is6: bool) -> (Vec<u8>, Vec<u8>) {
        let last = self.store.addr_key(from_u128(start + size - 1, is6));
        (
            self.store.addr_key(from_u128(start, is6)),
            prefix_end(&last),
        )
    }

    /// The first block from `start` on that no node claimed and that holds a pair of
    /// `pool`, and the first unclaimed block the search passed (with or without a pair),
    /// reading the claimed block keys a page at a time from `start`.
    fn first_free_block(
        &mut self,
        base: &[u8],
        pool: &Pool,
        is6: bool,
        size: u128,
        start: u128,
    ) -> Result<(Option<u128>, Option<u128>)> {
        let net = pool.net();
        let (lo, hi) = (to_u128(net.network()), to_u128(net.broadcast()));
        let mut b = start;
        let mut gap = None;
        while b <= hi {
            let from = self.store.addr_hex_key(base, from_u128(b, is6));
            let page = self.store.keys_page(&from, &prefix_end(base), PAGE)?;
            let claimed: HashSet<u128> = page
                .iter()
                .map(|k| {
                    std::str::from_utf8(&k[base.len()..])
                        .ok()
                        .and_then(parse_hex)
                        .ok_or_else(|| super::corrupt(k, "not a block start"))
                })
                .collect::<Result<_>>()?;
            // A full page says nothing beyond its last key: look up to there only.
            let until = match claimed.iter().max() {
                Some(last) if page.len() == PAGE => last.saturating_add(1),
                _ => hi.saturating_add(1),
            };
            while b < until && b <= hi {
                if !claimed.contains(&b) {
                    gap.get_or_insert(b);
                    let has_pair = (b.max(lo)..=(b + size - 1).min(hi))
                        .any(|a| pool.index_of(from_u128(a, is6)).is_some());
                    if has_pair {
                        return Ok((Some(b), gap));
                    }
                }
                match b.checked_add(size) {
                    Some(n) => b = n,
                    None => return Ok((None, gap)),
                }
            }
        }
        Ok((None, gap))
    }
}
