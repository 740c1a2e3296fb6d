//! The allocation logic, over any [`Txn`]: idempotent leases, round-robin choice of the
//! next free pair, reservations, release and garbage collection.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{name, Error, Kind, Result};

use crate::{lease::Lease, pool::Pool, store::Txn};

/// How many candidate pairs one allocation examines at most. IPv4 pools are smaller
/// than this, so for them it is a full sweep; an IPv6 pool this crowded is full enough.
const MAX_PROBES: u128 = 1 << 20;

/// The pools new leases come from.
#[derive(Debug, Clone, Copy)]
pub struct Pools {
    pub v4: Pool,
    pub v6: Option<Pool>,
}

/// The rule that turns a container name into its interface name: `common::name`'s, or
/// a fake in tests that makes names clash.
pub type IfName = fn(&str) -> String;

/// The lease of `name`, allocating one when it has none. An existing dynamic lease
/// without IPv6 gains an IPv6 pair once an IPv6 pool is configured.
pub fn allocate(tx: &mut dyn Txn, pools: &Pools, name: &str) -> Result<Lease> {
    allocate_with(tx, pools, name, name::host_ifname)
}

fn allocate_with(tx: &mut dyn Txn, pools: &Pools, name: &str, ifname: IfName) -> Result<Lease> {
    if let Some(mut lease) = tx.get(name)? {
        if let (Some(p6), None, false) = (pools.v6, lease.host_address6, lease.fixed) {
            let (h, l) = next_free(tx, &p6)?;
            (lease.host_address6, lease.local_address6) = (Some(v6(h)), Some(v6(l)));
            tx.put(&lease)?;
            log::info!("{name}: added IPv6 pair {h}, {l}");
        }
        return Ok(lease);
    }
    check_ifname(tx, name, ifname)?;
    let mut lease = Lease::new(name);
    let (h, l) = next_free(tx, &pools.v4)?;
    (lease.host_address, lease.local_address) = (Some(v4(h)), Some(v4(l)));
    if let Some(p6) = pools.v6 {
        let (h, l) = next_free(tx, &p6)?;
        (lease.host_address6, lease.local_address6) = (Some(v6(h)), Some(v6(l)));
    }
    tx.put(&lease)?;
    log::info!("{name}: leased {h}, {l}");
    Ok(lease)
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("IPv4 pool yields IPv4"),
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("IPv6 pool yields IPv6"),
    }
}

/// The first free pair after the one handed out last, wrapping around the pool: a
/// released pair is reused only after the whole pool has been gone through, so stale ARP
/// and conntrack entries never meet a new container.
fn next_free(tx: &mut dyn Txn, pool: &Pool) -> Result<(IpAddr, IpAddr)> {
    let is6 = pool.net().network().is_ipv6();
    let cap = pool.capacity();
    let start = tx
        .cursor(is6)?
        .and_then(|c| pool.index_of(c))
        .map_or(0, |i| (i + 1) % cap);
    for k in 0..cap.min(MAX_PROBES) {
        let i = (start + k) % cap;
        let (h, l) = pool.pair(i);
        if tx.holder(h)?.is_none() && tx.holder(l)?.is_none() {
            tx.set_cursor(is6, h)?;
            return Ok((h, l));
        }
    }
    Err(Error::new(
        Kind::CantCreate,
        format!("address pool {pool} is exhausted ({cap} pairs, all leased)"),
    ))
}

/// A static lease with chosen addresses (`reserve`). Idempotent for the same addresses.
pub fn reserve(tx: &mut dyn Txn, pools: &Pools, want: &Lease) -> Result<Lease> {
    for (a, pool) in want
        .host_address
        .iter()
        .chain(&want.local_address)
        .map(|a| (IpAddr::V4(*a), Some(pools.v4)))
        .chain(
            want.host_address6
                .iter()
                .chain(&want.local_address6)
                .map(|a| (IpAddr::V6(*a), pools.v6)),
        )
    {
        match pool {
            None => {
                return Err(Error::data(format!(
                    "cannot reserve {a}: no IPv6 pool is configured (--pool6)"
                )))
            }
            Some(p) if !p.contains(a) => {
                return Err(Error::data(format!(
                    "cannot reserve {a}: outside the pool {p}"
                )))
            }
            _ => {}
        }
        let net = pool.map(|p| p.net());
        if net.is_some_and(|n| a == n.network() || (a.is_ipv4() && a == n.broadcast())) {
            return Err(Error::data(format!(
                "cannot reserve {a}: it is the network or broadcast address of the pool"
            )));
        }
    }
    let mut lease = want.clone();
    lease.fixed = true;
    put_checked(tx, &lease)
}

/// Refuse `alloc NAME...` of two names that would get one interface name, before any
/// store is opened: on SQLite that is the check each lease makes against the earlier
/// ones of its transaction, on etcd (several transactions) the same answer with nothing
/// committed. Which of them holds a lease already does not matter: one is new, and the
/// other holds the interface name by then.
pub fn check_ifnames_among(names: &[&String]) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for n in names {
        let Some(kept) = name::kept_prefix(name::HOST_PREFIX, n) else {
            continue;
        };
        let mine = name::host_ifname(n);
        match seen.get(&mine) {
            // What SQLite's one transaction says of the later name, in its context.
            Some(other) if *other != n.as_str() => {
                return Err(ifname_clash(n, &mine, other, kept.len()).context(n.as_str()));
            }
            _ => {
                seen.insert(mine, n);
            }
        }
    }
    Ok(())
}

/// Refuse a new lease for `name` when its interface name is already another leased
/// name's: two long names that share their first bytes and, by chance, 40 bits of hash
/// (see `common::name`). Only those can clash, so only those are compared.
pub(crate) fn check_ifname(tx: &mut dyn Txn, new: &str, ifname: IfName) -> Result<()> {
    let Some(kept) = name::kept_prefix(name::HOST_PREFIX, new) else {
        return Ok(());
    };
    let mine = ifname(new);
    for other in tx.names_with_prefix(kept)? {
        if other != new && ifname(&other) == mine {
            return Err(ifname_clash(new, &mine, &other, kept.len()));
        }
    }
    Ok(())
}

fn ifname_clash(new: &str, mine: &str, other: &str, kept: usize) -> Error {
    Error::data(format!(
        "{new} would get the interface name {mine}, which {other} already has (long names \
         are shortened to their first {kept} bytes and a hash); choose another name"
    ))
}

/// Record `lease` unless its name holds other addresses, an address is held by another
/// name, its host and container addresses are the same, or its interface name is
/// another lease's; the same lease again is a no-op.
pub fn put_checked(tx: &mut dyn Txn, lease: &Lease) -> Result<Lease> {
    put_checked_with(tx, lease, name::host_ifname)
}

fn put_checked_with(tx: &mut dyn Txn, lease: &Lease, ifname: IfName) -> Result<Lease> {
    for (h, l) in [
        (
            lease.host_address.map(IpAddr::V4),
            lease.local_address.map(IpAddr::V4),
        ),
        (
            lease.host_address6.map(IpAddr::V6),
            lease.local_address6.map(IpAddr::V6),
        ),
    ] {
        if let Some(a) = h.filter(|h| Some(*h) == l) {
            return Err(Error::data(format!(
                "host and container addresses must differ ({a} is both)"
            )));
        }
    }
    if let Some(old) = tx.get(&lease.name)? {
        if old.addresses() == lease.addresses() {
            return Ok(old);
        }
        return Err(Error::data(format!(
            "{} already has a lease with other addresses ({}); release it first",
            lease.name,
            join(&old.addresses())
        )));
    }
    for a in lease.addresses() {
        if let Some(other) = tx.holder(a)? {
            return Err(Error::data(format!(
                "address {a} is already leased to {other}"
            )));
        }
    }
    check_ifname(tx, &lease.name, ifname)?;
    tx.put(lease)?;
    Ok(lease.clone())
}

fn join(a: &[IpAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dynamic leases whose names are not in `keep`; removed unless `dry_run`.
pub fn gc(tx: &mut dyn Txn, keep: &HashSet<String>, dry_run: bool) -> Result<Vec<Lease>> {
    let gone: Vec<Lease> = tx
        .all()?
        .into_iter()
        .filter(|l| !l.fixed && !keep.contains(&l.name))
        .collect();
    if !dry_run {
        for l in &gone {
            tx.remove(&l.name)?;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pool::Layout, store::mem::MemStore};

    fn pools(p4: &str, p6: Option<&str>) -> Pools {
        Pools {
            v4: Pool::parse(p4, false, Layout::Pairs).unwrap(),
            v6: p6.map(|p| Pool::parse(p, true, Layout::Pairs).unwrap()),
        }
    }

    fn s(a: Option<impl ToString>) -> String {
        a.map(|a| a.to_string()).unwrap_or_default()
    }

    #[test]
    fn same_name_same_lease() {
        let (mut tx, p) = (MemStore::default(), pools("10.233.0.0/16", None));
        let a = allocate(&mut tx, &p, "foo").unwrap();
        assert_eq!(s(a.host_address), "10.233.0.2");
        assert_eq!(s(a.local_address), "10.233.0.3");
        assert_eq!(allocate(&mut tx, &p, "foo").unwrap(), a);
        let b = allocate(&mut tx, &p, "bar").unwrap();
        assert_eq!(s(b.host_address), "10.233.0.4");
    }

    #[test]
    fn round_robin_does_not_reuse_until_wrap_then_exhausts() {
        let (mut tx, p) = (MemStore::default(), pools("192.0.2.0/29", None));
        let a = allocate(&mut tx, &p, "a").unwrap();
        tx.remove("a").unwrap();
        // The freed pair is skipped while the pool has an unused one.
        let b = allocate(&mut tx, &p, "b").unwrap();
        assert_eq!(s(b.host_address), "192.0.2.4");
        // Wrapped: the first pair is free again and taken.
        let c = allocate(&mut tx, &p, "c").unwrap();
        assert_eq!(c.host_address, a.host_address);
        let e = allocate(&mut tx, &p, "d").unwrap_err();
        assert_eq!(
            (e.kind(), e.exit()),
            (Kind::CantCreate, common::Exit::CantCreate)
        );
        assert!(e.to_string().contains("exhausted"), "{e}");
        assert!(tx.get("d").unwrap().is_none());
    }

    #[test]
    fn ipv6_pairs_alongside_and_added_later() {
        let (mut tx, p) = (
            MemStore::default(),
            pools("10.233.0.0/16", Some("fd42:ee::/64")),
        );
        let a = allocate(&mut tx, &p, "a").unwrap();
        assert_eq!(s(a.host_address6), "fd42:ee::2");
        assert_eq!(s(a.local_address6), "fd42:ee::3");
        let only4 = pools("10.233.0.0/16", None);
        let b = allocate(&mut tx, &only4, "b").unwrap();
        assert!(b.host_address6.is_none());
        let b2 = allocate(&mut tx, &p, "b").unwrap();
        assert_eq!(b2.host_address, b.host_address);
        assert_eq!(s(b2.host_address6), "fd42:ee::4");
    }

    #[test]
    fn reservations_are_checked_and_skipped_by_allocation() {
        let (mut tx, p) = (MemStore::default(), pools("10.233.0.0/16", None));
        let mut want = Lease::new("r");
        want.host_address = Some("10.233.0.3".parse().unwrap());
        want.local_address = Some("10.233.0.4".parse().unwrap());
        let r = reserve(&mut tx, &p, &want).unwrap();
        assert!(r.fixed);
        assert_eq!(reserve(&mut tx, &p, &want).unwrap(), r, "idempotent");
        // Pairs 0 (.2/.3) and 1 (.4/.5) overlap the reservation.
        let a = allocate(&mut tx, &p, "a").unwrap();
        assert_eq!(s(a.host_address), "10.233.0.6");

        let mut clash = Lease::new("x");
        clash.host_address = Some("10.233.0.4".parse().unwrap());
        clash.local_address = Some("10.233.0.9".parse().unwrap());
        let e = reserve(&mut tx, &p, &clash).unwrap_err();
        assert!(e.to_string().contains("already leased to r"), "{e}");
        for (h, l, why) in [
            ("10.234.0.2", "10.233.0.9", "outside the pool"),
            ("10.233.0.0", "10.233.0.9", "network or broadcast"),
            ("10.233.0.9", "10.233.0.9", "must differ"),
        ] {
            let mut w = Lease::new("y");
            w.host_address = Some(h.parse().unwrap());
            w.local_address = Some(l.parse().unwrap());
            let e = reserve(&mut tx, &p, &w).unwrap_err();
            assert_eq!(e.code(), 65);
            assert!(e.to_string().contains(why), "{e}");
        }
        let mut other = want.clone();
        other.local_address = Some("10.233.0.20".parse().unwrap());
        assert!(
            reserve(&mut tx, &p, &other).is_err(),
            "r holds other addresses"
        );
    }

    /// Every long name with the same first 3 bytes gets one interface name.
    fn clashing(n: &str) -> String {
        match name::kept_prefix(name::HOST_PREFIX, n) {
            Some(kept) => format!("ve-{kept}~clash"),
            None => name::host_ifname(n),
        }
    }

    #[test]
    fn a_name_whose_interface_name_is_taken_is_refused() {
        let (mut tx, p) = (MemStore::default(), pools("10.233.0.0/16", None));
        allocate_with(&mut tx, &p, "abcdefghijklm-1", clashing).unwrap();
        let before = tx.all().unwrap();
        let e = allocate_with(&mut tx, &p, "abcdefghijklm-2", clashing).unwrap_err();
        assert_eq!(e.code(), 65);
        assert!(
            e.to_string()
                .contains("interface name ve-abc~clash, which abcdefghijklm-1 already has"),
            "{e}"
        );
        assert_eq!(tx.all().unwrap(), before, "nothing changed");
        // The same name again is its own lease, not a clash; short names and other
        // prefixes never clash.
        allocate_with(&mut tx, &p, "abcdefghijklm-1", clashing).unwrap();
        allocate_with(&mut tx, &p, "abc", clashing).unwrap();
        allocate_with(&mut tx, &p, "abdefghijklmn-2", clashing).unwrap();
        // Static leases are checked too.
        let mut r = Lease::new("abcdefghijklm-3");
        r.host_address = Some("10.233.9.2".parse().unwrap());
        r.local_address = Some("10.233.9.3".parse().unwrap());
        r.fixed = true;
        assert_eq!(
            put_checked_with(&mut tx, &r, clashing).unwrap_err().code(),
            65
        );
        // With the real rule these names do not clash.
        allocate(&mut tx, &p, "abcdefghijklm-2").unwrap();
    }

    #[test]
    fn host_equal_to_local_is_bad_data() {
        let mut tx = MemStore::default();
        let mut l = Lease::new("x");
        l.host_address6 = Some("fd42::5".parse().unwrap());
        l.local_address6 = Some("fd42::5".parse().unwrap());
        let e = put_checked(&mut tx, &l).unwrap_err();
        assert_eq!(e.code(), 65);
        assert!(e.to_string().contains("must differ"), "{e}");
    }

    #[test]
    fn gc_keeps_named_and_static() {
        let (mut tx, p) = (MemStore::default(), pools("10.233.0.0/16", None));
        for n in ["a", "b", "c"] {
            allocate(&mut tx, &p, n).unwrap();
        }
        let mut st = Lease::new("s");
        st.host_address = Some("10.233.9.2".parse().unwrap());
        st.local_address = Some("10.233.9.3".parse().unwrap());
        reserve(&mut tx, &p, &st).unwrap();
        let keep: HashSet<String> = ["b".to_string()].into();
        let dry = gc(&mut tx, &keep, true).unwrap();
        assert_eq!(
            dry.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(tx.all().unwrap().len(), 4);
        gc(&mut tx, &keep, false).unwrap();
        let left: Vec<String> = tx.all().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(left, ["b", "s"]);
    }

    #[test]
    fn names_sharing_an_interface_name_are_refused_among_themselves() {
        // These two shorten to the same interface name (common::name pins the pair).
        let (a, b) = (
            "abc10eeb871e86d1243".to_string(),
            "abcf567240c36315443".to_string(),
        );
        let other = "abc-another-long-name".to_string();
        assert!(check_ifnames_among(&[&a, &other, &a]).is_ok());
        let e = check_ifnames_among(&[&a, &other, &b]).unwrap_err();
        assert_eq!(e.kind(), Kind::Data);
        assert!(
            e.to_string().starts_with(&format!("{b}: {b} would get")),
            "{e}"
        );
    }
}
