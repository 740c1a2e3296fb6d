//! CNI mode on the nftables backend: what ADD, DEL, GC and CHECK read of tables `inet
//! ve-nat` and `inet ve-nat-cni`, and how they write the port mapping elements, under
//! ve-nat's lock. With the tables there, a call talks to nf_tables over netlink in this
//! process (`nfnl`): whether each table is there (`NFT_MSG_GETTABLE`), a dump of each
//! map it needs (never the whole ruleset: nft's JSON listing of it grew to 90 ms with
//! 1,000 containers' elements), and one transaction of element additions and
//! deletions, so no nft process at all. The first ADD, which installs the tables, goes
//! through nft (the skeleton in `nft_cni`, in one `nft -j -f -`), and so does every
//! call when netlink cannot be used (then it reads `nft -j list ruleset`, as before).
//! Elements are the same either way: `nft_cni::raw_elements` writes them as nft does,
//! so each side reads and deletes what the other wrote.

use std::collections::HashSet;

use netlink_packet_netfilter::NetfilterProtoFamily as F;
use serde_json::Value;

use common::{Error, Result};

use crate::{
    backend::{self, Facts},
    config::{Family, IfPattern},
    native,
    nfnl::{ElemOp, Nfnl, SetElem},
    nft, nft_cni,
    nft_cni::{Deletion, Mapping, Owner},
    nft_table,
};

/// What a call reads of the two tables.
#[derive(Debug, Default)]
pub struct Seen {
    /// Table inet ve-nat (the shared NAT) is there.
    pub shared: bool,
    /// Table inet ve-nat-cni is there.
    pub cni: bool,
    /// Every mapping in inet ve-nat-cni, with its owner (`nft_cni::installed`).
    pub installed: Vec<(String, Mapping)>,
    /// The keys of its `dstF` sets (`nft_cni::Deletion`).
    pub dsts: HashSet<Vec<u8>>,
    /// The host ports `ve-nat up --forward` forwards (only when asked for).
    pub forwarded: Vec<(Family, String, u16)>,
}

/// How this call talks to nf_tables.
pub enum Io {
    Netlink(Nfnl),
    Nft,
}

impl Io {
    /// Netlink when a socket opens, else nft.
    pub fn open() -> Io {
        match Nfnl::open() {
            Ok(nl) => Io::Netlink(nl),
            Err(e) => {
                log::debug!("nf_tables netlink: {e}; using nft");
                Io::Nft
            }
        }
    }

    /// Read the tables; `forwarded`: the shared table's forwards too (ADD's clash
    /// check). A netlink read that fails falls back to nft for the rest of the call.
    pub fn read(&mut self, forwarded: bool) -> Result<Seen> {
        if let Io::Netlink(nl) = self {
            match read_netlink(nl, forwarded) {
                Ok(seen) => return Ok(seen),
                Err(e) => {
                    log::debug!("nf_tables netlink: {e}; using nft");
                    *self = Io::Nft;
                }
            }
        }
        let rs = native::ruleset()?;
        Ok(Seen {
            shared: native::present(&rs),
            cni: nft_cni::present(&rs),
            installed: nft_cni::installed(&rs),
            dsts: nft_cni::dsts(&rs),
            forwarded: if forwarded {
                nft_cni::forwarded(&rs)
            } else {
                Vec::new()
            },
        })
    }

    /// In one transaction: delete what `delete` chose (of what `read` found), then add
    /// `add`'s. Over netlink when table inet ve-nat-cni is there
    /// (`seen.cni`); else through nft, with the table made first when `skeleton`
    /// gives its parts (the container interfaces and the mark).
    pub fn write(
        &mut self,
        seen: &Seen,
        delete: &Deletion,
        add: Option<(&Owner, &[Mapping])>,
        skeleton: Option<(&[IfPattern], u32)>,
        what: &str,
    ) -> Result<()> {
        if let (Io::Netlink(nl), true) = (&mut *self, seen.cni) {
            // One message per set and kind (a GC deletes thousands of elements), the
            // deletions first, each element once (twice fails the transaction).
            let mut ops: Vec<(ElemOp, &str, Vec<SetElem>)> = Vec::new();
            let mut seen_keys = std::collections::HashSet::new();
            let mut push = |op: ElemOp, set: &'static str, elems: Vec<SetElem>| {
                let elems = elems
                    .into_iter()
                    .filter(|e| seen_keys.insert((op == ElemOp::Add, set, e.key.clone())));
                match ops.iter_mut().find(|(o, s, _)| *o == op && *s == set) {
                    Some((_, _, all)) => all.extend(elems),
                    None => ops.push((op, set, elems.collect())),
                }
            };
            for (set, elems) in delete.raw()? {
                push(ElemOp::Delete, set, elems);
            }
            if let Some((o, ms)) = add {
                for (set, elems) in nft_cni::raw_elements(o.as_str(), ms)? {
                    push(ElemOp::Add, set, elems);
                }
            }
            return nl
                .set_elements_batch(F::Inet, nft_cni::TABLE, &ops)
                .map_err(|e| Error::io(what, e));
        }
        let mut batch = nftables::batch::Batch::new();
        if let (false, Some((internal, mark))) = (seen.cni, skeleton) {
            for o in nft_cni::skeleton(internal, mark) {
                batch.add(o);
            }
        }
        for obj in delete.objects() {
            batch.delete(obj);
        }
        if let Some((o, ms)) = add {
            for obj in nft_cni::elements(o, ms) {
                batch.add(obj);
            }
        }
        let text = serde_json::to_string(&batch.to_nftables())
            .map_err(|e| Error::internal(format!("writing nft's JSON: {e}")))?;
        native::nft(&["-j", "-f", "-"], Some(&text))
            .map(drop)
            .map_err(|e| e.context(what))
    }

    /// What `--backend auto` looks at (`backend::Facts`; only with `decide`, else
    /// left empty), and whether iptables-nft's tables hold CNI chains of ours: over
    /// netlink (chains of the families ip and ip6, and the rules of a `filter FORWARD`
    /// chain there), else from nft's listing.
    pub fn facts(&mut self, decide: bool) -> (Facts, bool) {
        if let Io::Netlink(nl) = self {
            match facts_netlink(nl, decide) {
                Ok(f) => return f,
                Err(e) => {
                    log::debug!("nf_tables netlink: {e}; using nft");
                    *self = Io::Nft;
                }
            }
        }
        let rs = nft::ruleset();
        let cni_ipt = rs.as_deref().is_some_and(in_iptables_nft_cni);
        let facts = if decide {
            Facts::read(rs.as_deref())
        } else {
            Facts::default()
        };
        (facts, cni_ipt)
    }
}

fn read_netlink(nl: &mut Nfnl, forwarded: bool) -> std::io::Result<Seen> {
    let mut seen = Seen {
        shared: nl.table_exists(F::Inet, nft_table::TABLE)?,
        cni: nl.table_exists(F::Inet, nft_cni::TABLE)?,
        ..Seen::default()
    };
    if seen.cni {
        let mut maps: Vec<(&str, Vec<SetElem>)> = Vec::new();
        for name in nft_cni::MAPS {
            let elems = nl.set_elements(F::Inet, nft_cni::TABLE, name)?;
            maps.push((name, elems.unwrap_or_default()));
        }
        seen.installed = nft_cni::installed_raw(&maps);
        seen.dsts = nft_cni::dsts_raw(&maps);
    }
    if forwarded && seen.shared {
        let mut get = |f: Family| {
            nl.set_elements(F::Inet, nft_table::TABLE, nft_table::map_name(f))
                .map(Option::unwrap_or_default)
        };
        let (v4, v6) = (get(Family::Ipv4)?, get(Family::Ipv6)?);
        seen.forwarded = nft_cni::forwarded_raw(&v4, &v6);
    }
    Ok(seen)
}

fn facts_netlink(nl: &mut Nfnl, decide: bool) -> std::io::Result<(Facts, bool)> {
    let mut drops = Vec::new();
    let mut cni_ipt = false;
    for (family, name) in [(F::IPv4, "ip"), (F::IPv6, "ip6")] {
        let chains = nl.chains(family)?;
        cni_ipt |= chains
            .iter()
            .any(|c| crate::rules::CNI_CHAINS.iter().any(|x| x.chain == c.name));
        let forward = chains
            .iter()
            .find(|c| c.table == "filter" && c.name == "FORWARD");
        if let (true, Some(c)) = (decide, forward) {
            if nl.chain_drops(family, c)? {
                drops.push(format!("{name} filter FORWARD"));
            }
        }
    }
    // `backend::Facts::read` counts nft as installed when `nft -j list ruleset` works.
    // Here the nf_tables socket that just answered these dumps shows the kernel's side,
    // and nft on PATH is what installing the tables needs: no nft is started to ask
    // (with auto on iptables-nft the CNI table never exists, and asking nft would cost
    // every call a whole listing). A broken nft on PATH fails the first install with
    // nft's own error instead of choosing iptables.
    let nft_installed = decide && native::installed().is_ok();
    let facts = Facts {
        nft_installed,
        legacy_in_use: decide && backend::legacy_in_use(),
        iptables_forward_drops: drops,
    };
    Ok((facts, cni_ipt))
}

/// Whether iptables-nft's tables (families ip, ip6) in nft's listing hold a CNI chain
/// of ours.
fn in_iptables_nft_cni(ruleset: &[Value]) -> bool {
    ruleset.iter().filter_map(|o| o.get("chain")).any(|c| {
        (c["family"] == "ip" || c["family"] == "ip6")
            && crate::rules::CNI_CHAINS
                .iter()
                .any(|x| c["name"] == x.chain)
    })
}
