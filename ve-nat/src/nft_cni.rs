//! CNI mode's own table, `inet ve-nat-cni`, built here from validated values only (the
//! rule of `nft_table.rs`, whose helpers it uses): the port mappings of CNI containers,
//! each element commented with its attachment (network, container ID, ifname: `Owner`), so
//! that one attachment's ADD or DEL adds or deletes its own elements and nothing else,
//! and a GC only those of its own network. `ve-nat up` never touches this
//! table, and a CNI call never touches `inet ve-nat`'s maps (the forwards of
//! `ve-nat up --forward`), beyond installing that table once when it is missing.
//!
//! Per family F (4, 6): maps `fwdF`/`portF` (`PROTO . HOST_PORT : ADDR` / `: PORT`, as
//! in `inet ve-nat`) for mappings on every local address, `hfwdF`/`hportF` (`HOST_IP .
//! PROTO . HOST_PORT`) for those with a `hostIP`, and the set `dstF` of destinations for
//! the forward accept. The rules are fixed: a mapping adds elements, never a rule.
//! Which elements a mapping writes is chosen once (`per_set`) and written two ways: as
//! nft JSON objects (the first ADD, which installs the table through nft, and the
//! listing when netlink cannot be used) and as nf_tables' bytes for `nfnl`
//! (`raw_elements`, `installed_raw`), laid out exactly as nft lays them out, so each
//! reads and deletes what the other wrote.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use nftables::{
    expr::{self, Elem, Expression, MetaKey, NamedExpression},
    schema::{Chain, Element, Map, NfListObject, Rule, Set, SetType, SetTypeValue, Table},
    stmt::{self, Operator, Statement},
    types::{NfChainPolicy, NfFamily},
};
use serde_json::Value;

use common::{Error, Result};

use crate::{
    config::{Family, Forward, IfPattern, Proto},
    nfnl::{self, SetElem},
    nft_table::{
        addr, addr_type, concat, counter, ct_in, eq, has_mark, ifname, local_daddr, loopback,
        matches, meta, payload, proto, s, CHAINS,
    },
};

/// The table's name; family `inet`.
pub const TABLE: &str = "ve-nat-cni";

const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// An attachment on one network, fit for an element comment (at most 128 bytes):
/// `NETWORK/CONTAINER_ID/IFNAME`, the network `#` + a hash when it is long or has other
/// characters than CNI's, `CONTAINER_ID/IFNAME` likewise when the whole is too long.
/// Every element starts with its network, so one network's calls leave another's alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn new(network: &str, id: &str, ifname: &str) -> Result<Owner> {
        if id.len() > 128 || !common::cni::valid_container_id(id) {
            return Err(Error::data(format!("invalid container ID {id:?}")));
        }
        let plain = |v: &str, max: usize| {
            !v.is_empty()
                && v.len() <= max
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let hashed = |v: &str| format!("#{}", common::cni::hash12(v.as_bytes()));
        let net = Owner::network_part(network);
        let ifpart = if plain(ifname, 15) {
            ifname.to_string()
        } else {
            hashed(ifname)
        };
        let full = format!("{net}/{id}/{ifpart}");
        Ok(Owner(if full.len() <= 128 {
            full
        } else {
            format!("{net}/{}", hashed(&format!("{id}/{ifname}")))
        }))
    }

    /// How `network` starts an element's comment.
    pub fn network_part(network: &str) -> String {
        if !network.is_empty()
            && network.len() <= 64
            && network
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            network.to_string()
        } else {
            format!("#{}", common::cni::hash12(network.as_bytes()))
        }
    }

    /// Whether comment `comment` is of an attachment on `network`.
    pub fn on_network(comment: &str, network: &str) -> bool {
        comment.split('/').next() == Some(Owner::network_part(network).as_str())
            && comment.contains('/')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One port of one container: a single-port forward, on `host_ip` only when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub fwd: Forward,
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// Validate one mapping (through `Forward`'s parser) to container address `to`.
    pub fn new(
        proto: &str,
        host_port: u16,
        to: IpAddr,
        port: u16,
        host_ip: Option<IpAddr>,
    ) -> Result<Mapping> {
        let a = match to {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let fwd: Forward = format!("{proto}:{host_port}:{a}:{port}").parse()?;
        if host_ip.is_some_and(|h| Family::of(&h) != fwd.family()) {
            return Err(Error::data(format!(
                "hostIP {} and container address {to} differ in family",
                host_ip.map(|h| h.to_string()).unwrap_or_default()
            )));
        }
        Ok(Mapping { fwd, host_ip })
    }

    fn family(&self) -> Family {
        self.fwd.family()
    }

    /// The map key: `[HOST_IP .] PROTO . HOST_PORT`.
    fn key(&self) -> Expression<'static> {
        let mut parts = Vec::new();
        if let Some(h) = &self.host_ip {
            parts.push(addr(h));
        }
        parts.push(s(self.fwd.proto.as_str()));
        parts.push(Expression::Number(u32::from(self.fwd.host_ports.first)));
        concat(parts)
    }

    /// The `dstF` key: `PROTO . ADDR . PORT`.
    fn dst_key(&self) -> Expression<'static> {
        concat(vec![
            s(self.fwd.proto.as_str()),
            addr(&self.fwd.addr),
            Expression::Number(u32::from(self.fwd.ports.first)),
        ])
    }

    /// Whether `other` takes the same host port (same key).
    pub fn clashes(&self, other: &Mapping) -> bool {
        self.family() == other.family()
            && self.host_ip == other.host_ip
            && self.fwd.proto == other.fwd.proto
            && self.fwd.host_ports == other.fwd.host_ports
    }
}

fn names(f: Family) -> [&'static str; 5] {
    match f {
        Family::Ipv4 => ["fwd4", "port4", "hfwd4", "hport4", "dst4"],
        Family::Ipv6 => ["fwd6", "port6", "hfwd6", "hport6", "dst6"],
    }
}

fn nat_family(f: Family) -> stmt::NATFamily {
    match f {
        Family::Ipv4 => stmt::NATFamily::IP,
        Family::Ipv6 => stmt::NATFamily::IP6,
    }
}

/// `dnat F to KEY map @ADDR_MAP : KEY map @PORT_MAP`, the key with the destination
/// address in front when `host_ip`.
fn dnat(f: Family, host_ip: bool) -> Statement<'static> {
    let [fwd, port, hfwd, hport, _] = names(f);
    let (a, p) = if host_ip { (hfwd, hport) } else { (fwd, port) };
    let key = || {
        let mut k = Vec::new();
        if host_ip {
            k.push(payload(proto(f), "daddr"));
        }
        k.push(meta(MetaKey::L4proto));
        k.push(payload("th", "dport"));
        concat(k)
    };
    let lookup = |name: &str| {
        Expression::Named(NamedExpression::Map(Box::new(expr::Map {
            key: key(),
            data: s(format!("@{name}")),
        })))
    };
    Statement::DNAT(Some(stmt::NAT {
        addr: Some(lookup(a)),
        family: Some(nat_family(f)),
        port: Some(lookup(p)),
        flags: None,
    }))
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })
}

/// The whole table without elements: maps, sets, chains and their fixed rules.
/// `internal`: the container interfaces (hairpin masquerade of marked connections).
pub fn skeleton(internal: &[IfPattern], mark: u32) -> Vec<NfListObject<'static>> {
    let mut objs = vec![table()];
    for f in FAMILIES {
        let [fwd, port, hfwd, hport, dst] = names(f);
        let pt = || vec![SetType::InetProto, SetType::InetService];
        let hpt = || vec![addr_type(f), SetType::InetProto, SetType::InetService];
        for (name, key, value) in [
            (fwd, pt(), addr_type(f)),
            (port, pt(), SetType::InetService),
            (hfwd, hpt(), addr_type(f)),
            (hport, hpt(), SetType::InetService),
        ] {
            objs.push(NfListObject::Map(Box::new(Map {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.into(),
                set_type: SetTypeValue::Concatenated(key.into()),
                map: SetTypeValue::Single(value),
                ..Map::default()
            })));
        }
        objs.push(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: dst.into(),
            set_type: SetTypeValue::Concatenated(
                vec![SetType::InetProto, addr_type(f), SetType::InetService].into(),
            ),
            ..Set::default()
        })));
    }
    // The same hooks and priorities as `inet ve-nat`, without its input guard.
    for (name, t, hook, prio) in CHAINS.iter().filter(|c| c.0 != "input") {
        objs.push(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: (*name).into(),
            _type: Some(*t),
            hook: Some(*hook),
            prio: Some(*prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }
    let mut rules: Vec<(&str, Vec<Statement<'static>>)> = Vec::new();
    for f in FAMILIES {
        for host_ip in [true, false] {
            rules.push((
                "prerouting",
                vec![local_daddr(), counter(), dnat(f, host_ip)],
            ));
            // From the host itself: any local address but loopback.
            rules.push((
                "output",
                vec![
                    matches(payload(proto(f), "daddr"), Operator::NEQ, loopback(f)),
                    local_daddr(),
                    counter(),
                    dnat(f, host_ip),
                ],
            ));
        }
        rules.push((
            "forward",
            vec![
                ct_in("status", s("dnat")),
                eq(
                    concat(vec![
                        meta(MetaKey::L4proto),
                        payload(proto(f), "daddr"),
                        payload("th", "dport"),
                    ]),
                    s(format!("@{}", names(f)[4])),
                ),
                counter(),
                Statement::Accept(None),
            ],
        ));
    }
    // Hairpin: a container reaching a mapped port through a host address.
    for p in internal {
        rules.push((
            "postrouting",
            vec![
                ifname(MetaKey::Oifname, p),
                has_mark(mark),
                ct_in("status", s("dnat")),
                counter(),
                Statement::Masquerade(None),
            ],
        ));
    }
    for (chain, expr) in rules {
        objs.push(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }
    objs
}

fn commented(key: Expression<'static>, owner: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(key),
        timeout: None,
        expires: None,
        comment: Some(Cow::Owned(owner.to_string())),
        counter: None,
    }))
}

/// The element objects of `mappings`, commented with `owner`: for `add element` (or,
/// the same objects, `delete element`).
pub fn elements(owner: &Owner, mappings: &[Mapping]) -> Vec<NfListObject<'static>> {
    elements_of(owner.as_str(), mappings, true)
}

/// As [`elements`], with the comment as listed (`installed`); `dst`: with the `dstF`
/// elements (an add), or without (a deletion: those are `deletion`'s to choose).
fn elements_of(owner: &str, mappings: &[Mapping], dst: bool) -> Vec<NfListObject<'static>> {
    per_set(mappings, dst, |part, m| {
        let k = || commented(m.key(), owner);
        match part {
            Part::Addr => Expression::List(vec![k(), addr(&m.fwd.addr)]),
            Part::Port => {
                Expression::List(vec![k(), Expression::Number(u32::from(m.fwd.ports.first))])
            }
            Part::Dst => commented(m.dst_key(), owner),
        }
    })
    .into_iter()
    .map(|(name, elem)| element(name, elem))
    .collect()
}

/// One of a mapping's elements: in its address map, its port map, its `dstF` set.
#[derive(Debug, Clone, Copy)]
enum Part {
    Addr,
    Port,
    Dst,
}

/// The elements of `mappings` per set, each once (by set and key), made by `make`: the
/// one choice of what a mapping writes, for nft's JSON (`elements_of`) and nf_tables'
/// bytes (`raw_elements_of`) alike. `dst`: with the `dstF` elements. Mappings to one
/// container port share their `dst` element, and nf_tables fails a whole transaction
/// that adds or deletes an element twice.
fn per_set<E>(
    mappings: &[Mapping],
    dst: bool,
    mut make: impl FnMut(Part, &Mapping) -> E,
) -> Vec<(&'static str, Vec<E>)> {
    let mut by_set: Vec<(&'static str, Vec<E>)> = Vec::new();
    let mut seen = HashSet::new();
    for m in mappings {
        let [fwd, port, hfwd, hport, dst_set] = names(m.family());
        let (a, p) = if m.host_ip.is_some() {
            (hfwd, hport)
        } else {
            (fwd, port)
        };
        let mut parts = vec![
            (a, Part::Addr, m.key_bytes()),
            (p, Part::Port, m.key_bytes()),
        ];
        if dst {
            parts.push((dst_set, Part::Dst, m.dst_bytes()));
        }
        for (set, part, key) in parts {
            if !seen.insert((set, key)) {
                continue;
            }
            let e = make(part, m);
            match by_set.iter_mut().find(|(n, _)| *n == set) {
                Some((_, v)) => v.push(e),
                None => by_set.push((set, vec![e])),
            }
        }
    }
    by_set
}

fn element(name: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        elem: elem.into(),
    })
}

/// What a DEL, a GC or an ADD's replacement of a container's mappings deletes: each
/// leaving owner's mappings (their address and port map elements, all there, as read),
/// and the `dstF` elements (`PROTO . ADDR . PORT`, one per key) that are there and no
/// mapping that stays needs. A `dst` key is shared: two mappings to one container port,
/// or an address given to a second container while the first one's elements are still
/// there (its DEL failed), whose ADD then keeps the first one's element. Deleting an
/// element that is not there fails the whole transaction.
#[derive(Debug, Default, PartialEq)]
pub struct Deletion {
    pub owners: Vec<(String, Vec<Mapping>)>,
    pub dsts: Vec<Mapping>,
}

impl Deletion {
    /// The mappings `installed` holds of the owners `gone` chooses; `present`: the
    /// `dstF` keys there (`dsts`, `dsts_raw`); `adding`: mappings the same transaction
    /// adds (they stay).
    pub fn new(
        installed: &[(String, Mapping)],
        present: &HashSet<Vec<u8>>,
        gone: &dyn Fn(&str) -> bool,
        adding: &[Mapping],
    ) -> Deletion {
        let needed: HashSet<Vec<u8>> = installed
            .iter()
            .filter(|(o, _)| !gone(o))
            .map(|(_, m)| m)
            .chain(adding)
            .map(Mapping::dst_bytes)
            .collect();
        let mut d = Deletion::default();
        let mut chosen = HashSet::new();
        for (o, m) in installed.iter().filter(|(o, _)| gone(o)) {
            match d.owners.iter_mut().find(|(x, _)| x == o) {
                Some((_, ms)) => ms.push(m.clone()),
                None => d.owners.push((o.clone(), vec![m.clone()])),
            }
            let k = m.dst_bytes();
            if present.contains(&k) && !needed.contains(&k) && chosen.insert(k) {
                d.dsts.push(m.clone());
            }
        }
        d
    }

    /// How many mappings it deletes.
    pub fn mappings(&self) -> usize {
        self.owners.iter().map(|(_, ms)| ms.len()).sum()
    }

    /// Its element objects, for nft's `delete element`.
    pub fn objects(&self) -> Vec<NfListObject<'static>> {
        let mut out = Vec::new();
        for (o, ms) in &self.owners {
            out.extend(elements_of(o, ms, false));
        }
        for f in FAMILIES {
            let keys: Vec<Expression<'static>> = self
                .dsts
                .iter()
                .filter(|m| m.family() == f)
                .map(Mapping::dst_key)
                .collect();
            if !keys.is_empty() {
                out.push(element(names(f)[4], keys));
            }
        }
        out
    }

    /// Its elements in nf_tables' layout, per set, for `nfnl`.
    pub(crate) fn raw(&self) -> Result<Vec<(&'static str, Vec<SetElem>)>> {
        let mut out = Vec::new();
        for (o, ms) in &self.owners {
            out.extend(raw_elements_of(o, ms, false)?);
        }
        for m in &self.dsts {
            out.push((
                names(m.family())[4],
                vec![SetElem {
                    key: m.dst_bytes(),
                    ..SetElem::default()
                }],
            ));
        }
        Ok(out)
    }
}

/// The `dstF` keys in `ruleset` (nft's listing of the table, or the whole ruleset), in
/// nf_tables' layout (as [`dsts_raw`]), for [`Deletion::new`].
pub fn dsts(ruleset: &[Value]) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    for f in FAMILIES {
        let elems = ruleset
            .iter()
            .filter_map(|o| o.get("set"))
            .filter(|m| m["table"] == TABLE && m["family"] == "inet" && m["name"] == names(f)[4])
            .filter_map(|m| m["elem"].as_array())
            .flatten();
        for e in elems {
            let val = e.get("elem").map_or(e, |x| &x["val"]);
            let Some([p, a, port]) = val["concat"].as_array().map(Vec::as_slice) else {
                continue;
            };
            let (Some(p), Some(a), Some(port)) = (
                p.as_str(),
                a.as_str().and_then(|a| a.parse::<IpAddr>().ok()),
                port.as_u64().and_then(|n| u16::try_from(n).ok()),
            ) else {
                continue;
            };
            if let Ok(m) = Mapping::new(p, 1, a, port, None) {
                out.insert(m.dst_bytes());
            }
        }
    }
    out
}

/// The `dstF` keys in `maps` (as `installed_raw` takes them) that are well formed.
pub(crate) fn dsts_raw(maps: &[(&str, Vec<SetElem>)]) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    for f in FAMILIES {
        let len = 4 + addr_len(f) + 4;
        out.extend(
            maps.iter()
                .filter(|(n, _)| *n == names(f)[4])
                .flat_map(|(_, e)| e)
                .filter(|e| e.key.len() == len && proto_name(e.key[0]).is_some())
                .map(|e| e.key.clone()),
        );
    }
    out
}

/// The sets (and maps) of the table that hold what `installed_raw` and `dsts_raw`
/// read: the maps with keys, owners and addresses, those with container ports, and the
/// forward accepts' destinations.
pub const MAPS: [&str; 10] = [
    "fwd4", "port4", "hfwd4", "hport4", "dst4", "fwd6", "port6", "hfwd6", "hport6", "dst6",
];

/// nf_tables' byte layout of nft's types, as nft sends them: in a concatenated key
/// every field takes a multiple of 4 bytes (zero padded); `inet_proto` is 1 byte,
/// `inet_service` 2 bytes big-endian, an address 4 or 16 bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_byte(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn proto_name(b: u8) -> Option<&'static str> {
    match i32::from(b) {
        libc::IPPROTO_TCP => Some("tcp"),
        libc::IPPROTO_UDP => Some("udp"),
        _ => None,
    }
}

impl Mapping {
    /// The map key in nf_tables' layout: `[HOST_IP .] PROTO . HOST_PORT`.
    fn key_bytes(&self) -> Vec<u8> {
        let mut k = Vec::new();
        if let Some(h) = &self.host_ip {
            field(&mut k, &addr_bytes(h));
        }
        field(&mut k, &[proto_byte(self.fwd.proto)]);
        field(&mut k, &self.fwd.host_ports.first.to_be_bytes());
        k
    }

    /// The `dstF` element in nf_tables' layout: `PROTO . ADDR . PORT`.
    pub(crate) fn dst_bytes(&self) -> Vec<u8> {
        let mut k = Vec::new();
        field(&mut k, &[proto_byte(self.fwd.proto)]);
        field(&mut k, &addr_bytes(&self.fwd.addr));
        field(&mut k, &self.fwd.ports.first.to_be_bytes());
        k
    }
}

/// As [`elements`], in nf_tables' layout for `nfnl`: per set, its elements (each
/// once, `per_set`), commented with `owner`. Fails only for a comment too long for nftables.
pub(crate) fn raw_elements(
    owner: &str,
    mappings: &[Mapping],
) -> Result<Vec<(&'static str, Vec<SetElem>)>> {
    raw_elements_of(owner, mappings, true)
}

fn raw_elements_of(
    owner: &str,
    mappings: &[Mapping],
    dst: bool,
) -> Result<Vec<(&'static str, Vec<SetElem>)>> {
    let udata = nfnl::comment_udata(owner)
        .ok_or_else(|| Error::internal(format!("element comment {owner:?} is too long")))?;
    Ok(per_set(mappings, dst, |part, m| {
        let (key, data) = match part {
            Part::Addr => (m.key_bytes(), Some(addr_bytes(&m.fwd.addr))),
            Part::Port => (
                m.key_bytes(),
                Some(m.fwd.ports.first.to_be_bytes().to_vec()),
            ),
            Part::Dst => (m.dst_bytes(), None),
        };
        SetElem {
            key,
            data,
            userdata: Some(udata.clone()),
        }
    }))
}

/// A key in nf_tables' layout split into its fields: `[ADDR .] PROTO . PORT`, with an
/// address of `addr_len` bytes first when given.
fn split_key(key: &[u8], addr_len: Option<usize>) -> Option<(Option<IpAddr>, &'static str, u16)> {
    let (host, rest) = match addr_len {
        Some(n) => (Some(ip_of(key.get(..n)?)?), key.get(n..)?),
        None => (None, key),
    };
    if rest.len() != 8 {
        return None;
    }
    let proto = proto_name(rest[0])?;
    Some((host, proto, u16::from_be_bytes([rest[4], rest[5]])))
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn addr_len(f: Family) -> usize {
    match f {
        Family::Ipv4 => 4,
        Family::Ipv6 => 16,
    }
}

/// As [`installed`], from the elements of the table's maps as nf_tables holds them
/// (`maps`: each map's name and elements; elements written by nft or by `raw_elements`
/// alike).
pub(crate) fn installed_raw(maps: &[(&str, Vec<SetElem>)]) -> Vec<(String, Mapping)> {
    let elems = |n: &str| -> &[SetElem] {
        maps.iter()
            .find(|(m, _)| *m == n)
            .map_or(&[][..], |(_, e)| e.as_slice())
    };
    let mut out = Vec::new();
    for f in FAMILIES {
        let [fwd, port, hfwd, hport, _] = names(f);
        for (a, p, host) in [(fwd, port, false), (hfwd, hport, true)] {
            let ports: HashMap<&[u8], u16> = elems(p)
                .iter()
                .filter_map(|e| {
                    let d = e.data.as_deref()?;
                    Some((e.key.as_slice(), u16::from_be_bytes(d.try_into().ok()?)))
                })
                .collect();
            for e in elems(a) {
                let Some(owner) = e.userdata.as_deref().and_then(nfnl::udata_comment) else {
                    continue;
                };
                let parsed = split_key(&e.key, host.then(|| addr_len(f)));
                let (Some((host_ip, proto, hp)), Some(&cp), Some(to)) = (
                    parsed,
                    ports.get(e.key.as_slice()),
                    e.data.as_deref().and_then(ip_of),
                ) else {
                    continue;
                };
                if let Ok(m) = Mapping::new(proto, hp, to, cp, host_ip) {
                    out.push((owner, m));
                }
            }
        }
    }
    out
}

/// As [`forwarded`], from the elements of table `inet ve-nat`'s maps `fwd4` and
/// `fwd6` as nf_tables holds them (`PROTO . HOST_PORT` keys).
pub(crate) fn forwarded_raw(fwd4: &[SetElem], fwd6: &[SetElem]) -> Vec<(Family, String, u16)> {
    let mut out = Vec::new();
    for (f, elems) in [(Family::Ipv4, fwd4), (Family::Ipv6, fwd6)] {
        for e in elems {
            if let Some((_, p, hp)) = split_key(&e.key, None) {
                out.push((f, p.to_string(), hp));
            }
        }
    }
    out
}

/// The host ports `ve-nat up --forward` forwards in table `inet ve-nat` (`ruleset`
/// lists it, or the whole ruleset): `(family, proto, host port)`, from its `fwdF` maps.
pub fn forwarded(ruleset: &[Value]) -> Vec<(Family, String, u16)> {
    let mut out = Vec::new();
    for f in FAMILIES {
        let name = crate::nft_table::map_name(f);
        let elems = ruleset
            .iter()
            .filter_map(|o| o.get("map"))
            .find(|m| {
                m["table"] == crate::nft_table::TABLE && m["family"] == "inet" && m["name"] == name
            })
            .and_then(|m| m["elem"].as_array().cloned())
            .unwrap_or_default();
        for e in elems {
            let Some(key) = e.get(0) else { continue };
            let val = key.get("elem").map_or(key, |x| &x["val"]);
            let Some(parts) = val["concat"].as_array() else {
                continue;
            };
            if let (Some(p), Some(hp)) = (
                parts.first().and_then(Value::as_str),
                parts
                    .get(1)
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok()),
            ) {
                out.push((f, p.to_string(), hp));
            }
        }
    }
    out
}

impl Mapping {
    /// Whether `ve-nat up --forward`'s `(family, proto, host port)` takes this host port
    /// (it forwards on every local address, so a `hostIP` does not help).
    pub fn clashes_forward(&self, (f, proto, port): &(Family, String, u16)) -> bool {
        self.family() == *f
            && self.fwd.proto.as_str() == proto
            && self.fwd.host_ports.first == *port
    }
}

/// Whether `ruleset` (`nft -j list ruleset`) holds this table.
pub fn present(ruleset: &[Value]) -> bool {
    ruleset.iter().filter_map(|o| o.get("table")).any(|t| {
        t.get("family").and_then(Value::as_str) == Some("inet")
            && t.get("name").and_then(Value::as_str) == Some(TABLE)
    })
}

/// Every mapping in the table's maps (`ruleset` lists it, or the whole ruleset), with
/// the container ID of its comment; parsed back through the validating constructors,
/// so what is deleted later is built from validated values too. Anything else is left
/// out.
pub fn installed(ruleset: &[Value]) -> Vec<(String, Mapping)> {
    let map = |name: &str| -> Vec<Value> {
        ruleset
            .iter()
            .filter_map(|o| o.get("map"))
            .find(|m| m["table"] == TABLE && m["family"] == "inet" && m["name"] == name)
            .and_then(|m| m["elem"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for f in FAMILIES {
        let [fwd, port, hfwd, hport, _] = names(f);
        for (a, p, host) in [(fwd, port, false), (hfwd, hport, true)] {
            // The container port by key: one look-up per element, not a scan of the
            // port map (which holds an element per container).
            let mut ports: HashMap<String, u64> = HashMap::new();
            for pe in map(p) {
                if let (Some(k), Some(port)) = (pe.get(0), pe.get(1).and_then(Value::as_u64)) {
                    ports.entry(k["elem"]["val"].to_string()).or_insert(port);
                }
            }
            for e in map(a) {
                let (Some(key), Some(to)) = (e.get(0), e.get(1)) else {
                    continue;
                };
                let Some(owner) = key["elem"]["comment"].as_str() else {
                    continue;
                };
                let val = &key["elem"]["val"];
                let Some(parts) = val["concat"].as_array() else {
                    continue;
                };
                let port_of = ports
                    .get(&val.to_string())
                    .and_then(|&n| u16::try_from(n).ok());
                let (host_ip, rest) = if host {
                    let h = parts
                        .first()
                        .and_then(Value::as_str)
                        .and_then(|h| h.parse().ok());
                    (h, &parts[1.min(parts.len())..])
                } else {
                    (None, &parts[..])
                };
                if host && host_ip.is_none() {
                    continue;
                }
                let (Some(pr), Some(hp), Some(cp), Some(to)) = (
                    rest.first().and_then(Value::as_str),
                    rest.get(1)
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok()),
                    port_of,
                    to.as_str().and_then(|t| t.parse::<IpAddr>().ok()),
                ) else {
                    continue;
                };
                if let Ok(m) = Mapping::new(pr, hp, to, cp, host_ip) {
                    out.push((owner.to_string(), m));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(proto: &str, hp: u16, to: &str, p: u16, host: Option<&str>) -> Mapping {
        Mapping::new(
            proto,
            hp,
            to.parse().unwrap(),
            p,
            host.map(|h| h.parse().unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn elements_are_commented_and_parse_back() {
        let owner = Owner::new("net", &"ab".repeat(32), "eth0").unwrap();
        let maps = vec![
            m("tcp", 8080, "10.233.0.3", 80, None),
            m("udp", 5353, "fd00::3", 53, Some("2001:db8::1")),
        ];
        // Other containers' elements in the same maps, each to a port of its own.
        let others: Vec<(Owner, Mapping)> = (1..=3u16)
            .map(|i| {
                let o = Owner::new("net", &format!("{i:02}").repeat(32), "eth0").unwrap();
                (
                    o,
                    m(
                        "tcp",
                        9000 + i,
                        &format!("10.233.0.{}", 10 + i),
                        100 + i,
                        None,
                    ),
                )
            })
            .collect();
        let mut objs = elements(&owner, &maps);
        for (o, x) in &others {
            objs.extend(elements(o, std::slice::from_ref(x)));
        }
        // As nft lists them: one object per map, with all its elements.
        let mut by_map: Vec<(Value, Vec<Value>)> = Vec::new();
        for o in &objs {
            let v = serde_json::to_value(o).unwrap();
            let e = &v["element"];
            let elems = e["elem"].as_array().cloned().unwrap_or_default();
            match by_map.iter_mut().find(|(n, _)| *n == e["name"]) {
                Some((_, all)) => all.extend(elems),
                None => by_map.push((e["name"].clone(), elems)),
            }
        }
        let listing: Vec<Value> = by_map
            .into_iter()
            .map(|(name, elem)| {
                serde_json::json!({"map": {"family": "inet", "table": TABLE,
                    "name": name, "elem": elem}})
            })
            .collect();
        let back = installed(&listing);
        assert_eq!(back.len(), 5, "{listing:?}");
        let mine: Vec<&Mapping> = back
            .iter()
            .filter(|(o, _)| o == owner.as_str())
            .map(|(_, x)| x)
            .collect();
        assert_eq!(mine.len(), 2);
        assert!(mine.contains(&&maps[0]) && mine.contains(&&maps[1]));
        for (o, x) in &others {
            let got: Vec<&Mapping> = back
                .iter()
                .filter(|(b, _)| b == o.as_str())
                .map(|(_, x)| x)
                .collect();
            assert_eq!(got, [x], "{}", o.as_str());
        }
        assert!(maps[0].clashes(&m("tcp", 8080, "10.233.0.9", 81, None)));
        assert!(!maps[0].clashes(&m("udp", 8080, "10.233.0.9", 81, None)));
    }

    #[test]
    fn mappings_to_one_container_port_share_one_dst_element() {
        // podman -p 8080:80 -p 192.0.2.1:8082:80: two keys, one destination. Deleting
        // an element twice fails nft's whole transaction (and with it the CNI DEL).
        let maps = vec![
            m("tcp", 8080, "10.233.0.3", 80, None),
            m("tcp", 8082, "10.233.0.3", 80, Some("192.0.2.1")),
        ];
        for obj in elements_of("net/ctr/eth0", &maps, true) {
            let v = serde_json::to_value(&obj).unwrap();
            let elems = v["element"]["elem"].as_array().unwrap().clone();
            for (i, e) in elems.iter().enumerate() {
                assert!(
                    !elems[..i].contains(e),
                    "twice in {}: {e}",
                    v["element"]["name"]
                );
            }
            if v["element"]["name"] == "dst4" {
                assert_eq!(elems.len(), 1, "{v}");
            }
        }
        // nf_tables' bytes: the same sets, the same elements.
        let json: Vec<(String, usize)> = elements_of("net/ctr/eth0", &maps, true)
            .iter()
            .map(|o| {
                let v = serde_json::to_value(o).unwrap();
                let n = v["element"]["elem"].as_array().map_or(0, Vec::len);
                (v["element"]["name"].as_str().unwrap().to_string(), n)
            })
            .collect();
        let raw: Vec<(String, usize)> = raw_elements("net/ctr/eth0", &maps)
            .unwrap()
            .iter()
            .map(|(n, e)| (n.to_string(), e.len()))
            .collect();
        assert_eq!(json, raw);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Owner::new("n", "-x", "eth0").is_err());
        assert!(Owner::new("n", &"a".repeat(129), "eth0").is_err());
        let long = Owner::new(&"n".repeat(100), &"a".repeat(128), "eth0").unwrap();
        assert!(long.as_str().len() <= 128, "{}", long.as_str());
        assert!(Owner::on_network(long.as_str(), &"n".repeat(100)));
        let a = Owner::new("a", "ctr", "eth0").unwrap();
        assert_eq!(a.as_str(), "a/ctr/eth0");
        assert!(Owner::on_network(a.as_str(), "a") && !Owner::on_network(a.as_str(), "b"));
        assert!(!Owner::on_network("ctr", "ctr"));
        assert_ne!(a, Owner::new("b", "ctr", "eth0").unwrap());
        assert_ne!(a, Owner::new("a", "ctr", "eth1").unwrap());
        assert!(Mapping::new("sctp", 1, "10.0.0.2".parse().unwrap(), 1, None).is_err());
        assert!(Mapping::new("tcp", 0, "10.0.0.2".parse().unwrap(), 1, None).is_err());
        assert!(Mapping::new(
            "tcp",
            1,
            "10.0.0.2".parse().unwrap(),
            1,
            Some("2001:db8::1".parse().unwrap())
        )
        .is_err());
    }

    #[test]
    fn raw_elements_are_laid_out_as_nft_sends_them_and_parse_back() {
        // As `nft --debug=netlink add element` shows them (nft 1.0.6): every field of a
        // concatenation padded to 4 bytes, a port big-endian, the comment as udata.
        let maps = vec![
            m("tcp", 8080, "10.233.0.3", 80, None),
            m("udp", 53, "fd00::3", 5353, Some("2001:db8::1")),
        ];
        let raw = raw_elements("n", &maps).unwrap();
        let get = |name: &str| &raw.iter().find(|(n, _)| *n == name).unwrap().1;
        let udata = Some(vec![0, 2, b'n', 0]);
        assert_eq!(
            get("fwd4"),
            &[SetElem {
                key: vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0],
                data: Some(vec![10, 233, 0, 3]),
                userdata: udata.clone(),
            }]
        );
        assert_eq!(get("port4")[0].data, Some(vec![0, 80]));
        assert_eq!(get("dst4")[0].key, [6, 0, 0, 0, 10, 233, 0, 3, 0, 80, 0, 0]);
        assert_eq!(get("dst4")[0].data, None);
        let mut hkey = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        hkey.extend([17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(get("hfwd6")[0].key, hkey);
        assert_eq!(get("hport6")[0].data, Some(vec![0x14, 0xe9]));
        // Read back as nf_tables lists them.
        let listed: Vec<(&str, Vec<SetElem>)> = raw.clone();
        let back = installed_raw(&listed);
        assert_eq!(
            back,
            vec![
                ("n".to_string(), maps[0].clone()),
                ("n".to_string(), maps[1].clone())
            ]
        );
        // No comment, an unknown protocol, a short key: left out, as in `installed`.
        let mut odd = raw.clone();
        for (_, elems) in &mut odd {
            elems[0].userdata = None;
        }
        assert!(installed_raw(&odd).is_empty());
        let mut odd = raw.clone();
        odd.iter_mut().find(|(n, _)| *n == "fwd4").unwrap().1[0].key[0] = 132;
        assert_eq!(installed_raw(&odd).len(), 1);
        assert_eq!(
            forwarded_raw(&get("fwd4")[..], &[]),
            [(Family::Ipv4, "tcp".to_string(), 8080)]
        );
    }

    #[test]
    fn a_dst_key_a_staying_mapping_needs_is_not_deleted() {
        // A and B map different host ports to one address and port (B got A's address
        // while A's elements stayed); C's own; D's element is not there.
        let a = m("tcp", 8001, "10.233.0.11", 80, None);
        let b = m("tcp", 8002, "10.233.0.11", 80, None);
        let c = m("tcp", 8003, "10.233.0.13", 80, None);
        let d = m("tcp", 8004, "fd42::14", 80, None);
        let installed: Vec<(String, Mapping)> = [("a", &a), ("b", &b), ("c", &c), ("d", &d)]
            .into_iter()
            .map(|(o, x)| (o.to_string(), x.clone()))
            .collect();
        // The keys as nf_tables' bytes (nft's listing of real elements: the test
        // `the_fallback_reads_dst_elements_from_real_nft_listings`).
        let mut raw = Vec::new();
        for (o, x) in &installed[..3] {
            raw.extend(raw_elements(o, std::slice::from_ref(x)).unwrap());
        }
        let present = dsts_raw(&raw);
        assert_eq!(present.len(), 2);

        let del = Deletion::new(&installed, &present, &|o| o == "a", &[]);
        assert_eq!(del.owners, [("a".to_string(), vec![a.clone()])]);
        assert!(del.dsts.is_empty(), "B needs it");
        let both = Deletion::new(&installed, &present, &|o| o == "a" || o == "b", &[]);
        assert_eq!(both.dsts, std::slice::from_ref(&a), "once");
        let gc = Deletion::new(&installed, &present, &|o| o != "b", &[]);
        assert_eq!(gc.mappings(), 3);
        assert_eq!(
            gc.dsts,
            std::slice::from_ref(&c),
            "D's is not there, B's stays"
        );
        // An ADD replacing B's mapping by one to the same port keeps the element.
        let add = Deletion::new(
            &installed,
            &present,
            &|o| o == "c",
            std::slice::from_ref(&c),
        );
        assert!(add.dsts.is_empty());
        let objs: Vec<Value> = gc
            .objects()
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        let dst: Vec<&Value> = objs
            .iter()
            .filter(|o| o["element"]["name"] == "dst4")
            .collect();
        assert_eq!(dst.len(), 1, "{objs:?}");
        assert_eq!(
            dst[0]["element"]["elem"],
            serde_json::json!([{"concat": ["tcp", "10.233.0.13", 80]}])
        );
        let raw_del = gc.raw().unwrap();
        let keys: Vec<&SetElem> = raw_del
            .iter()
            .filter(|(n, _)| n.starts_with("dst"))
            .flat_map(|(_, e)| e)
            .collect();
        assert_eq!(keys.len(), 1);
    }

    /// The nft fallback (`dsts`, `installed`) on what the real `nft -j list` prints of
    /// real elements: some written from our JSON, one in nft's own syntax, one `dst`
    /// element shared by two mappings, one missing. It reads what netlink reads of the
    /// same kernel, and the deletion it chooses is one real nft accepts.
    #[test]
    fn the_fallback_reads_dst_elements_from_real_nft_listings() {
        if !testbed::privileged(
            "the_fallback_reads_dst_elements_from_real_nft_listings",
            &["ip", "nft"],
        ) {
            return;
        }
        let mut sb = testbed::Sandbox::new();
        let ns = sb.netns("host");
        let nft = |args: &[&str], input: Option<String>| -> String {
            let o = testbed::output_with_stdin(
                ns.command("nft").args(args),
                input.unwrap_or_default().as_bytes(),
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "nft {args:?}: {err}");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let batch = |add: bool, objs: Vec<NfListObject<'static>>| {
            let mut b = nftables::batch::Batch::new();
            for o in objs {
                if add {
                    b.add(o);
                } else {
                    b.delete(o);
                }
            }
            Some(serde_json::to_string(&b.to_nftables()).unwrap())
        };
        let ve: IfPattern = "ve-*".parse().unwrap();
        nft(&["-j", "-f", "-"], batch(true, skeleton(&[ve], 0x2000)));
        // A and B share one destination (B with a hostIP); D's `dst` element is gone.
        let a = m("tcp", 8001, "10.233.0.11", 80, None);
        let b = m("tcp", 8002, "10.233.0.11", 80, Some("192.0.2.1"));
        let c = m("udp", 53, "fd42::13", 5353, None);
        let d = m("tcp", 8004, "10.233.0.14", 80, None);
        let owner = |o: &str| Owner::new("net", o, "eth0").unwrap();
        for (o, x) in [("a", &a), ("b", &b), ("d", &d)] {
            nft(
                &["-j", "-f", "-"],
                batch(true, elements(&owner(o), std::slice::from_ref(x))),
            );
        }
        // C's map elements in our JSON, its `dst6` element in nft's own syntax.
        nft(
            &["-j", "-f", "-"],
            batch(
                true,
                elements_of(owner("c").as_str(), std::slice::from_ref(&c), false),
            ),
        );
        let c_dst = format!(
            "{{ udp . fd42::13 . 5353 comment \"{}\" }}",
            owner("c").as_str()
        );
        nft(&["add", "element", "inet", TABLE, "dst6", &c_dst], None);
        nft(
            &[
                "delete",
                "element",
                "inet",
                TABLE,
                "dst4",
                "{ tcp . 10.233.0.14 . 80 }",
            ],
            None,
        );
        let list = || -> Vec<Value> {
            let text = nft(&["-j", "list", "table", "inet", TABLE], None);
            let v: Value = serde_json::from_str(&text).unwrap();
            v["nftables"].as_array().cloned().unwrap()
        };
        let listing = list();
        let present = dsts(&listing);
        let want: HashSet<Vec<u8>> = [&a, &c].into_iter().map(Mapping::dst_bytes).collect();
        assert_eq!(present, want, "{listing:?}");
        let mut found = installed(&listing);
        found.sort_by(|x, y| x.0.cmp(&y.0));
        let owners: Vec<&str> = found.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(
            owners,
            ["net/a/eth0", "net/b/eth0", "net/c/eth0", "net/d/eth0"]
        );
        assert_eq!(found[1].1, b);
        // Netlink reads the same of the same kernel.
        let (raw_dsts, mut raw_found) = testbed::netns::in_netns(&ns.path(), || {
            let mut nl = nfnl::Nfnl::open().unwrap();
            let maps: Vec<(&str, Vec<SetElem>)> = MAPS
                .iter()
                .map(|n| {
                    let e = nl.set_elements(
                        netlink_packet_netfilter::NetfilterProtoFamily::Inet,
                        TABLE,
                        n,
                    );
                    (*n, e.unwrap().unwrap_or_default())
                })
                .collect();
            (dsts_raw(&maps), installed_raw(&maps))
        })
        .unwrap();
        raw_found.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(raw_dsts, present);
        assert_eq!(raw_found, found);

        // A's DEL keeps B's destination; D's deletes none (it is not there).
        let gone = |who: &'static [&'static str]| {
            move |o: &str| who.iter().any(|w| o == owner(w).as_str())
        };
        let del = Deletion::new(&found, &present, &gone(&["a"]), &[]);
        assert!(del.dsts.is_empty(), "B needs it: {del:?}");
        let del = Deletion::new(&found, &present, &gone(&["d"]), &[]);
        assert!(del.dsts.is_empty(), "D's is not there: {del:?}");
        // A, B and D at once (a GC keeping C): real nft takes the deletion as a whole.
        let del = Deletion::new(&found, &present, &gone(&["a", "b", "d"]), &[]);
        assert_eq!(del.dsts, std::slice::from_ref(&a));
        nft(&["-j", "-f", "-"], batch(false, del.objects()));
        let left = list();
        assert_eq!(dsts(&left), [c.dst_bytes()].into_iter().collect());
        let owners: Vec<String> = installed(&left).into_iter().map(|(o, _)| o).collect();
        assert_eq!(owners, ["net/c/eth0"]);
    }

    #[test]
    fn a_mapping_adds_no_rule() {
        let rules = skeleton(&[IfPattern::exact(&"ve-x".parse().unwrap())], 0x2000)
            .iter()
            .filter(|o| matches!(o, NfListObject::Rule(_)))
            .count();
        assert_eq!(rules, 11);
    }
}
