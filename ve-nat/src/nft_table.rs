//! The native nftables backend's rule set: the one table `inet ve-nat`, built here from
//! validated values only, as objects of the `nftables` crate (nft's JSON schema).
//!
//! Architecture invariant: no other module builds nftables rules (but `nft_cni`, CNI
//! mode's table, from these helpers and validated values). Every object is in the
//! form `nft -j list table inet ve-nat` prints it back (checked by the privileged tests),
//! so "installed equals wanted" is a comparison of JSON values, with handles, counter
//! values and element order left out (see `normalize`).
//!
//! The semantics are those of `rules.rs`: a mark bit on connections from container
//! interfaces (or `--internal-ip` sources) in prerouting, masquerade (or SNAT) of marked
//! connections leaving on the external interface, DNAT of any local address in prerouting
//! and output (loopback excluded), masquerade of hairpinned forwards, and accepts in
//! forward. Localhost forwards (IPv4, on unless `--no-localhost`): output DNATs
//! 127.0.0.0/8 too, and such a connection leaving on a container interface is
//! masqueraded; the `input` chain always holds the CVE-2020-8558 guard, which drops
//! anything to 127.0.0.0/8 that did not come in on `lo` and was not DNATed.
//! Port forwards are elements, one per port, of the maps `fwd4`/`fwd6`
//! (`PROTO . HOST_PORT : ADDR`) and `port4`/`port6` (`PROTO . HOST_PORT : PORT`; nft 1.0.6,
//! Debian 12's, cannot read a concatenated map value in JSON), with the sets `dst4`/`dst6`
//! of their destinations for the forward accept: adding a forward adds elements, no rule.

use std::{borrow::Cow, collections::HashSet, net::IpAddr};

use nftables::{
    expr::{self, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField},
    schema::{Chain, Map, NfListObject, Rule, Set, SetType, SetTypeValue, Table},
    stmt::{self, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use serde_json::Value;

use crate::config::{Family, IfPattern, Request};

/// The table's name; its family is `inet` (IPv4 and IPv6 in one table).
pub const TABLE: &str = "ve-nat";

/// Our base chains: name, type, hook, priority (nft's names: dstnat -100, srcnat 100,
/// filter 0; nat output has no name, -100 as iptables' nat OUTPUT).
pub const CHAINS: [(&str, NfChainType, NfHook, i32); 5] = [
    ("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
    ("output", NfChainType::NAT, NfHook::Output, -100),
    ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
    ("forward", NfChainType::Filter, NfHook::Forward, 0),
    ("input", NfChainType::Filter, NfHook::Input, 0),
];

/// A whole wanted table: every object `add` needs, table first.
pub fn wanted(req: &Request) -> Vec<NfListObject<'static>> {
    let mut objs = vec![NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })];
    for fam in req.families() {
        for (name, value, port) in [
            (map_name(fam), addr_type(fam), false),
            (port_map_name(fam), SetType::InetService, true),
        ] {
            objs.push(NfListObject::Map(Box::new(Map {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.into(),
                set_type: SetTypeValue::Concatenated(
                    vec![SetType::InetProto, SetType::InetService].into(),
                ),
                map: SetTypeValue::Single(value),
                elem: non_empty(map_elements(req, fam, port)),
                ..Map::default()
            })));
        }
        objs.push(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: set_name(fam).into(),
            set_type: SetTypeValue::Concatenated(
                vec![SetType::InetProto, addr_type(fam), SetType::InetService].into(),
            ),
            elem: non_empty(set_elements(req, fam)),
            ..Set::default()
        })));
    }
    for (name, t, hook, prio) in CHAINS {
        objs.push(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(t),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }
    for (chain, rules) in chain_rules(req) {
        for expr in rules {
            objs.push(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: chain.into(),
                expr: expr.into(),
                ..Rule::default()
            }));
        }
    }
    objs
}

pub fn map_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "fwd4",
        Family::Ipv6 => "fwd6",
    }
}

pub fn port_map_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "port4",
        Family::Ipv6 => "port6",
    }
}

pub fn set_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "dst4",
        Family::Ipv6 => "dst6",
    }
}

pub(crate) fn addr_type(f: Family) -> SetType {
    match f {
        Family::Ipv4 => SetType::Ipv4Addr,
        Family::Ipv6 => SetType::Ipv6Addr,
    }
}

pub(crate) fn proto(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

pub(crate) fn nfproto_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn non_empty(v: Vec<Expression<'static>>) -> Option<Cow<'static, [Expression<'static>]>> {
    (!v.is_empty()).then(|| v.into())
}

pub(crate) fn s(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

pub(crate) fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

pub(crate) fn addr(a: &IpAddr) -> Expression<'static> {
    s(a.to_string())
}

/// One element per port: `PROTO . HOST_PORT : ADDR`, or with `port` `: PORT`.
fn map_elements(req: &Request, fam: Family, port: bool) -> Vec<Expression<'static>> {
    let mut out = Vec::new();
    for f in req.forwards.iter().filter(|f| f.family() == fam) {
        for i in 0..f.host_ports.count() {
            let hp = u32::from(f.host_ports.first) + i;
            let p = u32::from(f.ports.first) + i;
            out.push(Expression::List(vec![
                concat(vec![s(f.proto.as_str()), Expression::Number(hp)]),
                if port {
                    Expression::Number(p)
                } else {
                    addr(&f.addr)
                },
            ]));
        }
    }
    out
}

/// One element per destination port: `PROTO . ADDR . PORT`.
fn set_elements(req: &Request, fam: Family) -> Vec<Expression<'static>> {
    let mut out = Vec::new();
    for f in req.forwards.iter().filter(|f| f.family() == fam) {
        for i in 0..f.ports.count() {
            let p = u32::from(f.ports.first) + i;
            out.push(concat(vec![
                s(f.proto.as_str()),
                addr(&f.addr),
                Expression::Number(p),
            ]));
        }
    }
    out
}

pub(crate) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

pub(crate) fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

pub(crate) fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub(crate) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

/// `iifname`/`oifname` match: nft's wildcard is a trailing `*` (`ve-+` means `ve-*`;
/// copying `ve-+` verbatim matches only an interface literally named so).
pub(crate) fn ifname(key: MetaKey, p: &IfPattern) -> Statement<'static> {
    let name = match p.as_str().strip_suffix('+') {
        Some(stem) => format!("{stem}*"),
        None => p.as_str().to_string(),
    };
    eq(meta(key), s(name))
}

pub(crate) fn prefix(net: &ipnet::IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(expr::Prefix {
        addr: Box::new(s(net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

pub(crate) fn nfproto(f: Family) -> Statement<'static> {
    eq(meta(MetaKey::Nfproto), s(nfproto_name(f)))
}

pub(crate) fn counter() -> Statement<'static> {
    Statement::Counter(stmt::Counter::Anonymous(Some(stmt::AnonymousCounter {
        packets: Some(0),
        bytes: Some(0),
    })))
}

fn set_mark(mark: u32) -> Statement<'static> {
    Statement::Mangle(stmt::Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(expr::BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            Expression::Number(mark),
        ]))),
    })
}

pub(crate) fn has_mark(mark: u32) -> Statement<'static> {
    eq(
        Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(mark),
        ))),
        Expression::Number(mark),
    )
}

pub(crate) fn ct_in(key: &'static str, right: Expression<'static>) -> Statement<'static> {
    matches(ct(key), Operator::IN, right)
}

fn established() -> Statement<'static> {
    ct_in(
        "state",
        Expression::List(vec![s("established"), s("related")]),
    )
}

fn dnat_map(fam: Family) -> Statement<'static> {
    let lookup = |name: &str| {
        Expression::Named(NamedExpression::Map(Box::new(expr::Map {
            key: concat(vec![meta(MetaKey::L4proto), payload("th", "dport")]),
            data: s(format!("@{name}")),
        })))
    };
    Statement::DNAT(Some(stmt::NAT {
        addr: Some(lookup(map_name(fam))),
        family: Some(match fam {
            Family::Ipv4 => stmt::NATFamily::IP,
            Family::Ipv6 => stmt::NATFamily::IP6,
        }),
        port: Some(lookup(port_map_name(fam))),
        flags: None,
    }))
}

pub(crate) fn local_daddr() -> Statement<'static> {
    let mut flags = HashSet::new();
    flags.insert(expr::FibFlag::Daddr);
    eq(
        Expression::Named(NamedExpression::Fib(expr::Fib {
            result: expr::FibResult::Type,
            flags,
        })),
        s("local"),
    )
}

pub(crate) fn loopback(fam: Family) -> Expression<'static> {
    match fam {
        Family::Ipv4 => prefix(&"127.0.0.0/8".parse().expect("a valid network")),
        Family::Ipv6 => s("::1"),
    }
}

/// The rules of each chain, in `CHAINS` order.
fn chain_rules(req: &Request) -> Vec<(&'static str, Vec<Vec<Statement<'static>>>)> {
    let fams = req.families();
    let mark = req.mark;
    let ext = IfPattern::exact(&req.external);
    // A rule for every family of the request: no match with --ipv6, IPv4 only without.
    let any_family = |mut r: Vec<Statement<'static>>| {
        if !req.ipv6 {
            r.insert(0, nfproto(Family::Ipv4));
        }
        r
    };
    let nets: Vec<(Family, &ipnet::IpNet)> = req
        .internal_ips
        .iter()
        .map(|n| {
            let f = match n {
                ipnet::IpNet::V4(_) => Family::Ipv4,
                ipnet::IpNet::V6(_) => Family::Ipv6,
            };
            (f, n)
        })
        .collect();
    // `ip saddr NET`, or for a /0 every address of the family.
    let net_match = |f: Family, n: &ipnet::IpNet, field: &'static str| {
        if n.prefix_len() == 0 {
            nfproto(f)
        } else {
            eq(payload(proto(f), field), prefix(n))
        }
    };

    let mut pre = Vec::new();
    for p in &req.internal {
        pre.push(any_family(vec![
            ifname(MetaKey::Iifname, p),
            set_mark(mark),
            counter(),
        ]));
    }
    for (f, n) in &nets {
        pre.push(vec![net_match(*f, n, "saddr"), set_mark(mark), counter()]);
    }
    for f in &fams {
        pre.push(vec![local_daddr(), counter(), dnat_map(*f)]);
    }

    // The kernel never routes a reply to ::1 that arrives on another interface (IPv6
    // has no route_localnet), so ::1 stays excluded.
    let localhost = req.localhost_forwards();
    let mut out = Vec::new();
    for f in &fams {
        let mut r = vec![local_daddr(), counter(), dnat_map(*f)];
        if !(localhost && *f == Family::Ipv4) {
            r.insert(
                0,
                matches(payload(proto(*f), "daddr"), Operator::NEQ, loopback(*f)),
            );
        }
        out.push(r);
    }

    let mut post = Vec::new();
    let nat = |f: Option<Family>| -> Statement<'static> {
        let ip = f.and_then(|f| req.external_ips.iter().find(|a| Family::of(a) == f));
        match (f, ip) {
            (Some(f), Some(a)) => Statement::SNAT(Some(stmt::NAT {
                addr: Some(addr(a)),
                family: Some(match f {
                    Family::Ipv4 => stmt::NATFamily::IP,
                    Family::Ipv6 => stmt::NATFamily::IP6,
                }),
                port: None,
                flags: None,
            })),
            _ => Statement::Masquerade(None),
        }
    };
    if req.external_ips.is_empty() {
        post.push(any_family(vec![
            ifname(MetaKey::Oifname, &ext),
            has_mark(mark),
            counter(),
            nat(None),
        ]));
    } else {
        for f in &fams {
            post.push(vec![
                nfproto(*f),
                ifname(MetaKey::Oifname, &ext),
                has_mark(mark),
                counter(),
                nat(Some(*f)),
            ]);
        }
    }
    if !req.forwards.is_empty() {
        for p in &req.internal {
            post.push(any_family(vec![
                ifname(MetaKey::Oifname, p),
                has_mark(mark),
                ct_in("status", s("dnat")),
                counter(),
                Statement::Masquerade(None),
            ]));
        }
    }

    if localhost {
        for p in &req.internal {
            post.push(vec![
                eq(payload("ip", "saddr"), loopback(Family::Ipv4)),
                ifname(MetaKey::Oifname, p),
                counter(),
                Statement::Masquerade(None),
            ]);
        }
    }

    let input = vec![vec![
        eq(payload("ip", "daddr"), loopback(Family::Ipv4)),
        matches(meta(MetaKey::Iifname), Operator::NEQ, s("lo")),
        eq(
            Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
                ct("status"),
                s("dnat"),
            ))),
            Expression::Number(0),
        ),
        counter(),
        Statement::Drop(None),
    ]];

    let mut fwd = Vec::new();
    for p in &req.internal {
        fwd.push(any_family(vec![
            ifname(MetaKey::Iifname, p),
            ifname(MetaKey::Oifname, &ext),
            counter(),
            Statement::Accept(None),
        ]));
        fwd.push(any_family(vec![
            ifname(MetaKey::Oifname, p),
            established(),
            counter(),
            Statement::Accept(None),
        ]));
    }
    for (f, n) in &nets {
        fwd.push(vec![
            net_match(*f, n, "saddr"),
            ifname(MetaKey::Oifname, &ext),
            counter(),
            Statement::Accept(None),
        ]);
        fwd.push(vec![
            net_match(*f, n, "daddr"),
            established(),
            counter(),
            Statement::Accept(None),
        ]);
    }
    for f in &fams {
        fwd.push(vec![
            ct_in("status", s("dnat")),
            eq(
                concat(vec![
                    meta(MetaKey::L4proto),
                    payload(proto(*f), "daddr"),
                    payload("th", "dport"),
                ]),
                s(format!("@{}", set_name(*f))),
            ),
            counter(),
            Statement::Accept(None),
        ]);
    }

    vec![
        ("prerouting", pre),
        ("output", out),
        ("postrouting", post),
        ("forward", fwd),
        ("input", input),
    ]
}

/// The objects of table `inet ve-nat` in `listing` (`nft -j list ...` output's array),
/// normalized: no handles, counters zeroed, set elements sorted, the table's own
/// object first. Empty when the table is not there.
pub fn ours(listing: &[Value]) -> Vec<Value> {
    listing
        .iter()
        .filter(|o| {
            o.as_object()
                .and_then(|m| m.values().next())
                .is_some_and(|v| {
                    v.get("family").and_then(Value::as_str) == Some("inet")
                        && (v.get("table").and_then(Value::as_str) == Some(TABLE)
                            || (o.get("table").is_some()
                                && v.get("name").and_then(Value::as_str) == Some(TABLE)))
                })
        })
        .map(normalize)
        .collect()
}

/// `wanted` as JSON values in the same normal form as `ours`.
pub fn wanted_values(objs: &[NfListObject<'_>]) -> Vec<Value> {
    objs.iter()
        .map(|o| normalize(&serde_json::to_value(o).unwrap_or(Value::Null)))
        .collect()
}

/// Handles and counter values out, set elements sorted, and nft's short form of a
/// zero flag test (`ct status ! dnat`, op `!`) back to the `& FLAG == 0` we write.
fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                if m.get("op").and_then(Value::as_str) == Some("!") {
                    if let (Some(l), Some(r)) = (m.remove("left"), m.remove("right")) {
                        m.insert("op".into(), Value::from("=="));
                        m.insert("left".into(), serde_json::json!({ "&": [l, r] }));
                        m.insert("right".into(), Value::from(0));
                    }
                }
                if let Some(Value::Object(c)) = m.get_mut("counter") {
                    c.insert("packets".into(), Value::from(0));
                    c.insert("bytes".into(), Value::from(0));
                }
                for x in m.values_mut() {
                    walk(x);
                }
                if let Some(Value::Array(e)) = m.get_mut("elem") {
                    e.sort_by_key(|x| x.to_string());
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Whether two normalized object lists describe the same table: the same rules in the
/// same order in each chain, and the same other objects in any order (nft lists tables,
/// sets and chains in an order of its own, which may change between versions).
pub fn same(a: &[Value], b: &[Value]) -> bool {
    fn key(v: &[Value]) -> (Vec<String>, Vec<(String, String)>) {
        let mut others: Vec<String> = Vec::new();
        let mut rules: Vec<(String, String)> = Vec::new();
        for o in v {
            match o.get("rule") {
                Some(r) => rules.push((r["chain"].to_string(), o.to_string())),
                None => others.push(o.to_string()),
            }
        }
        others.sort();
        // A stable sort by chain keeps each chain's order.
        rules.sort_by(|x, y| x.0.cmp(&y.0));
        (others, rules)
    }
    key(a) == key(b)
}

/// The container interface patterns of our installed prerouting rules (`iifname
/// "ve-*" ... mark set`), as `ve-+` patterns: where an earlier `up` may have set
/// `route_localnet`.
pub fn internal_patterns(ruleset: &[Value]) -> Vec<IfPattern> {
    let mut names = Vec::new();
    for r in ours(ruleset).iter().filter_map(|o| o.get("rule")) {
        if r["chain"] != "prerouting" {
            continue;
        }
        for st in r["expr"].as_array().into_iter().flatten() {
            let m = &st["match"];
            if m["left"]["meta"]["key"] == "iifname" && m["op"] == "==" {
                if let Some(name) = m["right"].as_str() {
                    names.push(name.to_string());
                }
            }
        }
    }
    patterns_of(&names)
}

/// Interface names as nft writes them (`ve-*`, `eth0`) as our patterns (`ve-+`),
/// without repeats; anything that is not a valid pattern is left out.
pub fn patterns_of(names: &[String]) -> Vec<IfPattern> {
    let mut out = Vec::new();
    for name in names {
        let pat = match name.strip_suffix('*') {
            Some(stem) => format!("{stem}+"),
            None => name.to_string(),
        };
        if let Ok(p) = pat.parse::<IfPattern>() {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// A short name of one object for messages: `chain forward`, `map fwd4`, `rule in
/// postrouting`, `table`.
pub fn describe(v: &Value) -> String {
    let Some((kind, o)) = v.as_object().and_then(|m| m.iter().next()) else {
        return "an object".into();
    };
    let g = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
    match kind.as_str() {
        "rule" => format!("a rule in chain {}", g("chain")),
        "table" => "the table".into(),
        k => format!("{k} {}", g("name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fwd: &[&str], ipv6: bool, ext_ip: &[&str], nets: &[&str]) -> Request {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Request::new("up0", &[], &s(nets), &s(ext_ip), &s(fwd), ipv6, None).unwrap()
    }

    fn rules_of(objs: &[Value], chain: &str) -> Vec<String> {
        objs.iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect()
    }

    #[test]
    fn wildcard_is_translated_and_ipv4_only_without_ipv6() {
        let w = wanted_values(&wanted(&req(&[], false, &[], &[])));
        let pre = rules_of(&w, "prerouting");
        assert!(pre[0].contains(r#""right":"ve-*""#), "{}", pre[0]);
        assert!(!pre[0].contains("ve-+"));
        assert!(pre[0].contains(r#""right":"ipv4""#), "{}", pre[0]);
        assert!(w.iter().all(|o| o
            .get("map")
            .is_none_or(|m| m["name"] == "fwd4" || m["name"] == "port4")));
        assert_eq!(
            rules_of(&w, "postrouting").len(),
            1,
            "no hairpin without forwards"
        );
    }

    #[test]
    fn forwards_are_elements() {
        let a = wanted_values(&wanted(&req(&["tcp:8080:10.233.1.2:80"], true, &[], &[])));
        let b = wanted_values(&wanted(&req(
            &[
                "tcp:8080:10.233.1.2:80",
                "udp:5000-5001:[fd00::2]:6000-6001",
            ],
            true,
            &[],
            &[],
        )));
        let rules = |w: &[Value]| w.iter().filter(|o| o.get("rule").is_some()).count();
        assert_eq!(rules(&a), rules(&b), "a forward adds no rule");
        let fwd6 = b
            .iter()
            .find_map(|o| o.get("map").filter(|m| m["name"] == "fwd6"))
            .unwrap();
        assert_eq!(fwd6["elem"].as_array().unwrap().len(), 2);
        assert_eq!(
            fwd6["elem"][0],
            serde_json::json!([{"concat": ["udp", 5000]}, "fd00::2"])
        );
        let port6 = b
            .iter()
            .find_map(|o| o.get("map").filter(|m| m["name"] == "port6"))
            .unwrap();
        assert_eq!(
            port6["elem"][1],
            serde_json::json!([{"concat": ["udp", 5001]}, 6001])
        );
    }

    #[test]
    fn order_of_objects_but_not_of_rules_is_free() {
        let v = |s: &str| -> Vec<Value> { serde_json::from_str(s).unwrap() };
        let a = v(r#"[{"set": {"name": "a"}}, {"chain": {"name": "c"}},
            {"rule": {"chain": "c", "expr": [1]}}, {"rule": {"chain": "c", "expr": [2]}},
            {"rule": {"chain": "d", "expr": [3]}}]"#);
        let b = v(r#"[{"chain": {"name": "c"}}, {"set": {"name": "a"}},
            {"rule": {"chain": "d", "expr": [3]}}, {"rule": {"chain": "c", "expr": [1]}},
            {"rule": {"chain": "c", "expr": [2]}}]"#);
        assert!(same(&a, &b));
        let c = v(r#"[{"set": {"name": "a"}}, {"chain": {"name": "c"}},
            {"rule": {"chain": "c", "expr": [2]}}, {"rule": {"chain": "c", "expr": [1]}},
            {"rule": {"chain": "d", "expr": [3]}}]"#);
        assert!(!same(&a, &c), "rule order within a chain matters");
        assert!(!same(&a, &a[..4]));
    }

    #[test]
    fn listing_is_normalized_like_wanted() {
        let listed: Vec<Value> = serde_json::from_str(
            r#"[{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "ve-nat", "handle": 1}},
            {"table": {"family": "inet", "name": "other", "handle": 2}},
            {"map": {"family": "inet", "name": "fwd4", "table": "ve-nat", "type": ["inet_proto", "inet_service"], "handle": 5, "map": "ipv4_addr", "elem": [[{"concat": ["tcp", 9]}, "10.0.0.2"], [{"concat": ["tcp", 8]}, "10.0.0.2"]]}},
            {"rule": {"family": "inet", "table": "ve-nat", "chain": "forward", "handle": 7, "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "other", "chain": "forward", "handle": 7, "expr": []}}]"#,
        )
        .unwrap();
        let o = ours(&listed);
        assert_eq!(o.len(), 3);
        assert_eq!(
            o[0],
            serde_json::json!({"table": {"family": "inet", "name": "ve-nat"}})
        );
        assert_eq!(o[1]["map"]["elem"][0][0]["concat"][1], 8);
        assert_eq!(o[2]["rule"]["expr"][0]["counter"]["packets"], 0);
    }
}
