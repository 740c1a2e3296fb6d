//! nf_tables over netlink, in this process: what `down` and CNI mode's calls need,
//! without starting `nft`. Starting nft and letting it fetch its cache costs more than
//! the kernel's work: a `down` that deleted table inet ve-nat through two nft processes
//! spent most of its 21-28 ms starting them, and a CNI call's `nft -j list ruleset`
//! grew to 90 ms with 1,000 containers' elements. Here one socket deletes a table (one
//! transaction, `NFT_MSG_DELTABLE`; not there is ENOENT, which counts as done), asks
//! whether a table is there (`NFT_MSG_GETTABLE`), lists chains (a `NFT_MSG_GETCHAIN`
//! dump), the interface names one chain's rules match and whether a base chain
//! drops (`NFT_MSG_GETRULE` dumps), the elements of one set (a `NFT_MSG_GETSETELEM`
//! dump), and adds and deletes set elements in one transaction (`NFT_MSG_NEWSETELEM`,
//! `NFT_MSG_DELSETELEM`, every message acknowledged), with messages built and parsed by
//! `netlink-packet-netfilter`. Elements are raw bytes here; what they mean is the
//! caller's (`nft_cni`).

use std::{io, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{
        ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
        Immediate, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, RuleAttribute,
        RuleMessage, SetElementAttribute, SetElementList, SetElementMessage, TableAttribute,
        TableMessage, VerdictAttribute,
    },
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::nft::Stmt;

/// `nfnetlink.h`: the nf_tables subsystem, named in a batch's `res_id`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// Room for one datagram of a dump (the kernel fills what the reader offers).
const RECV_BUF: usize = 64 * 1024;

/// How long an answer may take before the socket gives up.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Elements per `NFT_MSG_NEWSETELEM`/`DELSETELEM` message: its element list is one
/// attribute, whose length is 16 bits (an element of ours takes at most ~200 bytes).
const ELEMS_PER_MESSAGE: usize = 256;

/// A dump the ruleset changed under is asked again, this many times in all.
const DUMP_TRIES: usize = 3;

/// One element of a set or map as nf_tables holds it: the key and (in a map) the data,
/// in the set's byte layout, and its user data (nft keeps the comment there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetElem {
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub userdata: Option<Vec<u8>>,
}

/// A chain as `Nfnl::chains` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub table: String,
    pub name: String,
    /// It has a hook.
    pub base: bool,
    /// A base chain's policy (`NF_DROP` 0, `NF_ACCEPT` 1).
    pub policy: Option<u32>,
}

/// What a transaction does to the elements of one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    /// `add element`: an element already there with the same data is no error.
    Add,
    /// `delete element`: one not there fails the whole transaction.
    Delete,
}

/// nftables' user data TLV for an element comment (`NFTNL_UDATA_SET_ELEM_COMMENT`):
/// type 0, a length byte, the text NUL-terminated, as nft writes it. `None` when the
/// text does not fit the length byte (nft allows 128 bytes).
pub fn comment_udata(text: &str) -> Option<Vec<u8>> {
    let len = u8::try_from(text.len() + 1).ok()?;
    let mut out = vec![0, len];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Some(out)
}

/// The comment in an element's user data (see [`comment_udata`]), if any.
pub fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= udata.len() {
        let (kind, len) = (udata[at], usize::from(udata[at + 1]));
        let value = udata.get(at + 2..at + 2 + len)?;
        if kind == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(text).ok().map(str::to_string);
        }
        at += 2 + len;
    }
    None
}

/// An nf_tables netlink socket of this namespace.
pub struct Nfnl {
    sock: Socket,
    seq: u32,
}

impl Nfnl {
    pub fn open() -> io::Result<Nfnl> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&sock, TIMEOUT)?;
        // An error answer without a copy of the message it refuses (a batch message
        // holds up to 256 elements), with the kernel's note on what it refused.
        sock.set_cap_ack(true)?;
        // Only a better error text: kernels without it (before 4.12) still work.
        let _ = sock.set_ext_ack(true);
        Ok(Nfnl { sock, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Delete table `family name` with everything in it, in one transaction. Returns
    /// whether it was there (ENOENT: it was not, and nothing changed).
    pub fn delete_table(&mut self, family: NetfilterProtoFamily, name: &str) -> io::Result<bool> {
        let begin = self.next_seq();
        let del = self.next_seq();
        let end = self.next_seq();
        let batch = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
        let mut out = Vec::new();
        emit(
            &mut out,
            begin,
            NLM_F_REQUEST,
            NetfilterMessage::new(batch.clone(), ControlMessage::BatchBegin),
        );
        emit(
            &mut out,
            del,
            NLM_F_REQUEST | NLM_F_ACK,
            NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(name.to_string())],
                }),
            ),
        );
        emit(
            &mut out,
            end,
            NLM_F_REQUEST,
            NetfilterMessage::new(batch, ControlMessage::BatchEnd),
        );
        self.sock.send(&out, 0)?;
        // The kernel runs the whole batch in `send`; the answer for `del` (an ack, or
        // the error that aborted the batch) is queued by then.
        let mut result = None;
        self.read(|m| {
            let NetlinkPayload::Error(e) = &m.payload else {
                return Ok(false);
            };
            let seq = m.header.sequence_number;
            match e.code {
                None if seq == del => result = Some(true),
                None => return Ok(false),
                Some(c) if seq == del && -c.get() == libc::ENOENT => result = Some(false),
                // No nf_tables in this kernel: no table either.
                Some(c) if seq == begin && -c.get() == libc::EOPNOTSUPP => result = Some(false),
                Some(_) => return Err(e.to_io()),
            }
            Ok(true)
        })?;
        result.ok_or_else(|| io::Error::other("no answer to NFT_MSG_DELTABLE"))
    }

    /// Whether table `family name` is there.
    pub fn table_exists(&mut self, family: NetfilterProtoFamily, name: &str) -> io::Result<bool> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        emit(
            &mut out,
            seq,
            NLM_F_REQUEST | NLM_F_ACK,
            NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                NfTablesMessage::GetTable(TableMessage {
                    attributes: vec![TableAttribute::Name(name.to_string())],
                }),
            ),
        );
        self.sock.send(&out, 0)?;
        let mut there = false;
        self.read(|m| {
            if m.header.sequence_number != seq {
                return Ok(false);
            }
            match &m.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(_)),
                    ..
                }) => there = true,
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(true),
                    Some(c) if -c.get() == libc::ENOENT => {
                        there = false;
                        return Ok(true);
                    }
                    Some(_) => return Err(e.to_io()),
                },
                _ => {}
            }
            Ok(false)
        })?;
        Ok(there)
    }

    /// The elements of set (or map) `set` of table `family table`; `None` when the
    /// table or the set is not there. Read raw: netlink-packet-netfilter's parser of
    /// element lists formats the whole buffer for an error context at every element,
    /// which made a dump of 1,000 elements take 0.25 s; the attributes needed here are
    /// read directly.
    pub fn set_elements(
        &mut self,
        family: NetfilterProtoFamily,
        table: &str,
        set: &str,
    ) -> io::Result<Option<Vec<SetElem>>> {
        let ask = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_string()),
                SetElementList::Set(set.to_string()),
            ],
        });
        self.dump_raw(
            family,
            &ask,
            "a set's elements",
            |elems: &mut Vec<SetElem>, m| {
                if m.kind != NFT_NEWSETELEM {
                    return Ok(());
                }
                // After the 4-byte nfgenmsg: the list attributes.
                let attrs = m.body.get(4..).unwrap_or(&[]);
                for a in nlas(attrs)? {
                    if a.kind() == NFTA_SET_ELEM_LIST_ELEMENTS {
                        for item in nlas(a.value())? {
                            elems.push(raw_elem(item.value())?);
                        }
                    }
                }
                Ok(())
            },
        )
    }

    /// Send the dump request `ask` for `family` and hand each message of the answer
    /// to `each`, raw, with what it gathers so far; `None` when the kernel answered
    /// ENOENT (nothing of the kind there). A dump the ruleset changed under
    /// (`NLM_F_DUMP_INTR`) is read to its end, so the socket is free again, and asked
    /// again from scratch, `DUMP_TRIES` times in all.
    fn dump_raw<T: Default>(
        &mut self,
        family: NetfilterProtoFamily,
        ask: &NfTablesMessage,
        what: &str,
        mut each: impl FnMut(&mut T, &RawMsg) -> io::Result<()>,
    ) -> io::Result<Option<T>> {
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            let mut out = Vec::new();
            emit(
                &mut out,
                seq,
                NLM_F_REQUEST | NLM_F_DUMP,
                NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), ask.clone()),
            );
            self.sock.send(&out, 0)?;
            let mut got = T::default();
            let mut dump = Dump::new(seq);
            self.read_raw(|m| match dump.step(m)? {
                Step::Skip => Ok(false),
                Step::Data => each(&mut got, m).map(|()| false),
                Step::End => Ok(true),
            })?;
            match dump {
                Dump { intr: true, .. } => continue,
                Dump { absent: true, .. } => return Ok(None),
                _ => return Ok(Some(got)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("the ruleset kept changing while {what} were listed"),
        ))
    }

    /// Each message that comes in, unparsed, to `each` until it says the answer is
    /// complete.
    fn read_raw(&self, mut each: impl FnMut(&RawMsg) -> io::Result<bool>) -> io::Result<()> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            self.recv(&mut buf, 0)?;
            if each_message(&buf, &mut each)? {
                return Ok(());
            }
        }
    }

    /// One datagram into `buf` (emptied first), through signals.
    fn recv(&self, buf: &mut Vec<u8>, flags: libc::c_int) -> io::Result<()> {
        loop {
            buf.clear();
            match self.sock.recv(buf, flags) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// As `read_raw`, each message parsed.
    fn read(
        &self,
        mut each: impl FnMut(&NetlinkMessage<NetfilterMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.read_raw(|raw| each(&raw.parse()?))
    }

    /// Add and delete elements of sets of table `family table`, in one transaction, in
    /// the order given. Every message is acknowledged; the first refusal (which
    /// aborts the whole transaction) is the error.
    pub fn set_elements_batch(
        &mut self,
        family: NetfilterProtoFamily,
        table: &str,
        ops: &[(ElemOp, &str, Vec<SetElem>)],
    ) -> io::Result<()> {
        let batch = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
        let mut out = Vec::new();
        let begin = self.next_seq();
        emit(
            &mut out,
            begin,
            NLM_F_REQUEST,
            NetfilterMessage::new(batch.clone(), ControlMessage::BatchBegin),
        );
        let mut pending = Vec::new();
        for (op, set, elems) in ops {
            for chunk in elems.chunks(ELEMS_PER_MESSAGE) {
                let list = chunk
                    .iter()
                    .map(|e| {
                        let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(
                            e.key.clone(),
                        ))];
                        if let (ElemOp::Add, Some(d)) = (op, &e.data) {
                            attrs.push(SetElementAttribute::Data(DataAttribute::Value(d.clone())));
                        }
                        if let Some(u) = &e.userdata {
                            attrs.push(SetElementAttribute::UserData(u.clone()));
                        }
                        ListAttribute::Element(attrs)
                    })
                    .collect();
                let msg = SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(table.to_string()),
                        SetElementList::Set((*set).to_string()),
                        SetElementList::Elements(list),
                    ],
                };
                let (msg, flags) = match op {
                    ElemOp::Add => (NfTablesMessage::NewSetElement(msg), NLM_F_CREATE),
                    ElemOp::Delete => (NfTablesMessage::DeleteSetElement(msg), 0),
                };
                let seq = self.next_seq();
                emit(
                    &mut out,
                    seq,
                    NLM_F_REQUEST | NLM_F_ACK | flags,
                    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg),
                );
                pending.push(seq);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let end = self.next_seq();
        emit(
            &mut out,
            end,
            NLM_F_REQUEST,
            NetfilterMessage::new(batch, ControlMessage::BatchEnd),
        );
        // The kernel takes a batch in one datagram, within the socket's send buffer,
        // and queues every answer (~1 KiB each in the socket's accounting) before this
        // process reads one.
        if out.len() > 128 * 1024 {
            set_buf(&self.sock, libc::SO_SNDBUFFORCE, out.len() * 2)?;
        }
        if pending.len() > 64 {
            set_buf(&self.sock, libc::SO_RCVBUFFORCE, pending.len() * 4096)?;
        }
        self.sock.send(&out, 0)?;
        // Every answer is read, also after a refusal (the kernel answers every message
        // of a refused batch it got to): all are queued by the time `send` returns, so
        // after the first refusal what is queued is read without waiting.
        let mut first = None;
        let mut buf = Vec::with_capacity(RECV_BUF);
        while !pending.is_empty() {
            let flags = if first.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            match self.recv(&mut buf, flags) {
                Ok(()) => {}
                Err(e) if first.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            each_message(&buf, &mut |m| {
                if m.kind != NLMSG_ERROR || !(m.seq == begin || pending.contains(&m.seq)) {
                    return Ok(false);
                }
                pending.retain(|s| *s != m.seq);
                if m.seq == begin {
                    // The batch as a whole: nothing else follows.
                    pending.clear();
                }
                match m.errno() {
                    0 => {}
                    e if first.is_none() => first = Some((m.seq == begin, e, m.ext_ack_msg())),
                    _ => {}
                }
                Ok(pending.is_empty())
            })?;
        }
        match first {
            None => Ok(()),
            Some((whole, e, note)) => {
                let what = if whole { "the batch" } else { "set elements" };
                let err = io::Error::from_raw_os_error(e);
                let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                Err(io::Error::new(
                    err.kind(),
                    format!("nf_tables refused {what} in table {table}: {err}{note}"),
                ))
            }
        }
    }

    /// Whether base chain `c` (as `chains` listed it) drops what reaches its end, as
    /// `nft::chain_drops` decides for nft's listing: policy drop, or any rule that drops
    /// or rejects unconditionally (only counter, log or limit before the drop). `false`
    /// for a chain without a hook.
    pub fn chain_drops(&mut self, family: NetfilterProtoFamily, c: &Chain) -> io::Result<bool> {
        let Some(policy) = c.policy.filter(|_| c.base) else {
            return Ok(false);
        };
        // A drop policy needs no look at the rules.
        if policy == NF_DROP {
            return Ok(true);
        }
        let rules = self.rules(family, &c.table, &c.name)?;
        Ok(crate::nft::chain_drops(
            false,
            rules.iter().map(|r| unconditional_drop(r)),
        ))
    }

    /// The chains of `family`.
    pub fn chains(&mut self, family: NetfilterProtoFamily) -> io::Result<Vec<Chain>> {
        let mut chains = Vec::new();
        let ask = NfTablesMessage::GetChain(ChainMessage { attributes: vec![] });
        self.dump(family, ask, "chains", false, |m| {
            let NfTablesMessage::NewChain(c) = m else {
                return;
            };
            let mut chain = Chain::default();
            let (mut table, mut name) = (None, None);
            for a in &c.attributes {
                match a {
                    ChainAttribute::Table(t) => table = Some(t.clone()),
                    ChainAttribute::Name(n) => name = Some(n.clone()),
                    ChainAttribute::Hook(_) => chain.base = true,
                    ChainAttribute::Policy(p) => chain.policy = Some(*p),
                    _ => {}
                }
            }
            if let (Some(t), Some(n)) = (table, name) {
                (chain.table, chain.name) = (t, n);
                chains.push(chain);
            }
        })?;
        Ok(chains)
    }

    /// The input interface names the rules of chain `family table chain` compare
    /// with (`meta iifname == NAME`), as nft writes them: `ve-*` for a prefix match
    /// (nft sends the stem without its NUL), `eth0` for a whole name. Nothing when the
    /// table or chain is not there.
    pub fn iifnames(
        &mut self,
        family: NetfilterProtoFamily,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<String>> {
        let rules = self.rules(family, table, chain)?;
        Ok(rules.iter().flat_map(|r| iifname_matches(r)).collect())
    }

    /// The expressions of each rule of chain `family table chain`, in order; nothing
    /// when the table or chain is not there.
    fn rules(
        &mut self,
        family: NetfilterProtoFamily,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<Vec<ListAttribute<ExpressionAttribute>>>> {
        let mut rules = Vec::new();
        let ask = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.to_string()),
                RuleAttribute::Chain(chain.to_string()),
            ],
        });
        self.dump(family, ask, "rules", true, |m| {
            let NfTablesMessage::NewRule(r) = m else {
                return;
            };
            // Kernels filter the dump by table and chain; this makes sure of it.
            let (mut in_table, mut in_chain, mut exprs) = (false, false, Vec::new());
            for a in &r.attributes {
                match a {
                    RuleAttribute::Table(t) => in_table |= t == table,
                    RuleAttribute::Chain(c) => in_chain |= c == chain,
                    RuleAttribute::Expressions(list) => exprs.extend(list.iter().cloned()),
                    _ => {}
                }
            }
            if in_table && in_chain {
                rules.push(exprs);
            }
        })?;
        Ok(rules)
    }

    /// As `dump_raw`, each nf_tables message of the answer parsed and handed to
    /// `each` (once the dump is complete). The kernel's refusal is an error, but for
    /// ENOENT (nothing of the kind there) when `absent_ok`.
    fn dump(
        &mut self,
        family: NetfilterProtoFamily,
        ask: NfTablesMessage,
        what: &str,
        absent_ok: bool,
        each: impl FnMut(&NfTablesMessage),
    ) -> io::Result<()> {
        let got = self.dump_raw(family, &ask, what, |all: &mut Vec<NfTablesMessage>, m| {
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::NfTables(msg),
                ..
            }) = m.parse()?.payload
            {
                all.push(msg);
            }
            Ok(())
        })?;
        match got {
            Some(all) => all.iter().for_each(each),
            None if absent_ok => {}
            None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
        Ok(())
    }
}

/// Each netlink message in datagram `buf` to `each`, until it says the answer is
/// complete: then `true`.
fn each_message(
    buf: &[u8],
    each: &mut impl FnMut(&RawMsg) -> io::Result<bool>,
) -> io::Result<bool> {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let h = &buf[at..at + 16];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < 16 || at + len > buf.len() {
            return Err(io::Error::other("a netlink message of a bad length"));
        }
        let m = RawMsg {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            body: &buf[at + 16..at + len],
            whole: &buf[at..at + len],
        };
        if each(&m)? {
            return Ok(true);
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// One dump's answer, read message by message (`Dump::step`).
struct Dump {
    seq: u32,
    /// The ruleset changed while it was listed: ask again.
    intr: bool,
    /// The kernel answered ENOENT.
    absent: bool,
}

/// What a message is to a dump.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Another request's.
    Skip,
    /// Part of the answer.
    Data,
    /// The end of the answer (`NLMSG_DONE`, or an error ack).
    End,
}

impl Dump {
    fn new(seq: u32) -> Dump {
        Dump {
            seq,
            intr: false,
            absent: false,
        }
    }

    /// Read on to the end whatever the flags say: a reader that stops at the first
    /// `NLM_F_DUMP_INTR` leaves the rest queued, and the next dump gets EBUSY.
    fn step(&mut self, m: &RawMsg) -> io::Result<Step> {
        if m.seq != self.seq {
            return Ok(Step::Skip);
        }
        if m.flags & NLM_F_DUMP_INTR != 0 {
            self.intr = true;
        }
        match m.kind {
            NLMSG_DONE => Ok(Step::End),
            NLMSG_ERROR => match m.errno() {
                0 => Ok(Step::End),
                libc::ENOENT => {
                    self.absent = true;
                    Ok(Step::End)
                }
                e => Err(io::Error::from_raw_os_error(e)),
            },
            _ => Ok(Step::Data),
        }
    }
}

/// In one rule's expressions: each `meta load iifname => reg R` followed by `cmp eq
/// reg R DATA`, as the name nft would print.
fn iifname_matches(list: &[ListAttribute<ExpressionAttribute>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut iifname_in = None;
    for item in list {
        let ListAttribute::Element(attrs) = item else {
            continue;
        };
        for a in attrs {
            let ExpressionAttribute::Data(data) = a else {
                continue;
            };
            match data {
                Expressions::Meta(m) => {
                    let key = m.iter().find_map(|x| match x {
                        Meta::Key(k) => Some(*k),
                        _ => None,
                    });
                    iifname_in = m.iter().find_map(|x| match x {
                        Meta::DestinationRegister(r) if key == Some(MetaKey::Iifname) => Some(*r),
                        _ => None,
                    });
                }
                Expressions::Cmp(c) => {
                    let reg = c.iter().find_map(|x| match x {
                        Cmp::SourceRegister(r) => Some(*r),
                        _ => None,
                    });
                    let eq = c.iter().any(|x| matches!(x, Cmp::Op(Operator::Equal)));
                    let value = c.iter().find_map(|x| match x {
                        Cmp::Data(DataAttribute::Value(v)) => Some(v.clone()),
                        _ => None,
                    });
                    if let (true, true, Some(v)) = (reg.is_some() && reg == iifname_in, eq, value) {
                        out.push(match v.iter().position(|b| *b == 0) {
                            Some(end) => String::from_utf8_lossy(&v[..end]).into_owned(),
                            None => format!("{}*", String::from_utf8_lossy(&v)),
                        });
                    }
                    iifname_in = None;
                }
                _ => iifname_in = None,
            }
        }
    }
    out
}

/// `netlink.h`, `nf_tables.h`: what `read_raw`'s callers look for.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// An error answer carries attributes (`NLM_F_ACK_TLVS`); the note's type.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NFT_NEWSETELEM: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 12;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;

/// One netlink message, unparsed (`Nfnl::read_raw`).
struct RawMsg<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    /// After the header.
    body: &'a [u8],
    /// Header and body.
    whole: &'a [u8],
}

impl RawMsg<'_> {
    /// An `NLMSG_ERROR`'s note (`NLMSGERR_ATTR_MSG`, with `NETLINK_EXT_ACK`), after
    /// the errno and the refused message's header (`NETLINK_CAP_ACK`).
    fn ext_ack_msg(&self) -> Option<String> {
        if self.flags & NLM_F_ACK_TLVS == 0 {
            return None;
        }
        let tlvs = self.body.get(20..)?;
        let msg = nlas(tlvs)
            .ok()?
            .into_iter()
            .find(|a| a.kind() == NLMSGERR_ATTR_MSG)?;
        let text = msg.value().strip_suffix(&[0]).unwrap_or(msg.value());
        std::str::from_utf8(text).ok().map(str::to_string)
    }

    fn parse(&self) -> io::Result<NetlinkMessage<NetfilterMessage>> {
        NetlinkMessage::<NetfilterMessage>::deserialize(self.whole)
            .map_err(|e| io::Error::other(format!("reading nf_tables netlink: {e}")))
    }

    /// An `NLMSG_ERROR`'s errno (0: an acknowledgement).
    fn errno(&self) -> i32 {
        self.body.get(..4).map_or(libc::EPROTO, |b| {
            -i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        })
    }
}

fn nlas(buf: &[u8]) -> io::Result<Vec<NlaBuffer<&[u8]>>> {
    NlasIterator::new(buf)
        .map(|a| a.map_err(|e| io::Error::other(format!("reading nf_tables netlink: {e}"))))
        .collect()
}

/// One `NFTA_LIST_ELEM` of a set element list: key, data value, user data.
fn raw_elem(attrs: &[u8]) -> io::Result<SetElem> {
    let value = |nested: &[u8]| -> io::Result<Option<Vec<u8>>> {
        Ok(nlas(nested)?
            .into_iter()
            .find(|v| v.kind() == NFTA_DATA_VALUE)
            .map(|v| v.value().to_vec()))
    };
    let mut e = SetElem::default();
    for a in nlas(attrs)? {
        match a.kind() {
            NFTA_SET_ELEM_KEY => e.key = value(a.value())?.unwrap_or_default(),
            NFTA_SET_ELEM_DATA => e.data = value(a.value())?,
            NFTA_SET_ELEM_USERDATA => e.userdata = Some(a.value().to_vec()),
            _ => {}
        }
    }
    Ok(e)
}

/// `NF_DROP`, a verdict and a chain policy.
const NF_DROP: u32 = 0;

/// A rule's expressions as `nft::Stmt`s: counter, log and limit passive, a drop
/// verdict or a reject a drop, anything else (a match, another verdict) other.
fn unconditional_drop(list: &[ListAttribute<ExpressionAttribute>]) -> bool {
    let stmts: Vec<Stmt> = list
        .iter()
        .filter_map(|item| match item {
            ListAttribute::Element(attrs) => Some(attrs),
            _ => None,
        })
        .map(|attrs| {
            let name = attrs.iter().find_map(|a| match a {
                ExpressionAttribute::Name(n) => Some(n.as_str()),
                _ => None,
            });
            let drop_verdict = attrs.iter().any(|a| {
                matches!(a, ExpressionAttribute::Data(Expressions::Immediate(im))
                    if im.iter().any(|x| matches!(x,
                        Immediate::Data(DataAttribute::Verdict(v))
                            if v.iter().any(|c| matches!(c,
                                VerdictAttribute::Code(code) if u32::from(*code) == NF_DROP)))))
            });
            match name {
                Some("immediate") if drop_verdict => Stmt::Drop,
                Some("reject") => Stmt::Drop,
                Some("counter" | "log" | "limit") => Stmt::Passive,
                _ => Stmt::Other,
            }
        })
        .collect();
    crate::nft::drops_all(&stmts)
}

fn emit(out: &mut Vec<u8>, seq: u32, flags: u16, msg: NetfilterMessage) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let at = out.len();
    out.resize(at + m.buffer_len(), 0);
    m.serialize(&mut out[at..]);
}

fn set_buf(sock: &Socket, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let n = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(sock, libc::SOL_SOCKET, option, n)
}

/// `setsockopt` of an int option (also `watch`'s).
pub(crate) fn set_int_option(
    sock: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with an int option value of the right length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_recv_timeout(sock: &Socket, t: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros() as i32),
    };
    // SAFETY: setsockopt with a timeval option value of the right length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;
    use netlink_packet_netfilter::nftables::Register;

    fn expr(name: &str, data: Expressions) -> ListAttribute<ExpressionAttribute> {
        ListAttribute::Element(vec![
            ExpressionAttribute::Name(name.into()),
            ExpressionAttribute::Data(data),
        ])
    }

    fn iifname(reg: Register) -> ListAttribute<ExpressionAttribute> {
        expr(
            "meta",
            Expressions::Meta(vec![
                Meta::Key(MetaKey::Iifname),
                Meta::DestinationRegister(reg),
            ]),
        )
    }

    fn cmp(reg: Register, op: Operator, v: &[u8]) -> ListAttribute<ExpressionAttribute> {
        expr(
            "cmp",
            Expressions::Cmp(vec![
                Cmp::SourceRegister(reg),
                Cmp::Op(op),
                Cmp::Data(DataAttribute::Value(v.to_vec())),
            ]),
        )
    }

    /// A netlink message as the kernel queues it, padded to 4 bytes.
    fn raw(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + body.len()).unwrap();
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend(flags.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(body);
        m.resize(m.len().div_ceil(4) * 4, 0);
        m
    }

    /// The steps of one dump over datagrams `bufs`, as `dump_raw` reads them.
    fn steps(dump: &mut Dump, bufs: &[Vec<u8>]) -> io::Result<Vec<Step>> {
        let mut out = Vec::new();
        for buf in bufs {
            let done = each_message(buf, &mut |m| {
                let s = dump.step(m)?;
                let end = s == Step::End;
                out.push(s);
                Ok(end)
            })?;
            if done {
                break;
            }
        }
        Ok(out)
    }

    #[test]
    fn an_interrupted_dump_is_read_to_its_end() {
        let elem = |flags| raw(NFT_NEWSETELEM, NLM_F_MULTIPART | flags, 7, &[2, 0, 0, 0]);
        let done = raw(NLMSG_DONE, NLM_F_MULTIPART, 7, &0i32.to_ne_bytes());
        // The ruleset changed after the first datagram: the rest is read all the same,
        // to NLMSG_DONE, and the dump is asked again.
        let first = [elem(0), raw(NLMSG_ERROR, 0, 6, &0i32.to_ne_bytes())].concat();
        let second = [elem(NLM_F_DUMP_INTR), elem(0), done.clone()].concat();
        let mut d = Dump::new(7);
        let got = steps(&mut d, &[first, second, elem(0)]).unwrap();
        assert_eq!(
            got,
            [Step::Data, Step::Skip, Step::Data, Step::Data, Step::End]
        );
        assert!(d.intr && !d.absent);
        // ENOENT: nothing there; another error is the kernel's refusal.
        let mut d = Dump::new(7);
        let enoent = raw(NLMSG_ERROR, 0, 7, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(steps(&mut d, &[enoent]).unwrap(), [Step::End]);
        assert!(d.absent && !d.intr);
        let eperm = raw(NLMSG_ERROR, 0, 7, &(-libc::EPERM).to_ne_bytes());
        let e = steps(&mut Dump::new(7), &[eperm]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let mut d = Dump::new(7);
        assert_eq!(steps(&mut d, &[done]).unwrap(), [Step::End]);
        assert!(!d.intr && !d.absent);
        // A length past the datagram.
        let mut bad = elem(0);
        bad[0] = 200;
        assert!(steps(&mut Dump::new(7), &[bad]).is_err());
    }

    /// A refused batch: the first refusal is the error, and every answer to it is read,
    /// so nothing is left queued for the next request.
    #[test]
    fn a_refused_batch_leaves_nothing_queued() {
        if !testbed::privileged("a_refused_batch_leaves_nothing_queued", &["ip", "nft"]) {
            return;
        }
        let mut sb = testbed::Sandbox::new();
        let ns = sb.netns("host");
        let nft = ns
            .command("nft")
            .args(["add table inet t; add set inet t a { type inet_service; };"])
            .args(["add set inet t b { type inet_service; }; add element inet t b { 80 }"])
            .output()
            .unwrap();
        assert!(nft.status.success(), "{nft:?}");
        let got = testbed::netns::in_netns(&ns.path(), || {
            let mut nl = Nfnl::open().unwrap();
            let port = |p: u16| SetElem {
                key: p.to_be_bytes().to_vec(),
                ..SetElem::default()
            };
            // Two refusals (neither element is there), one message that would do.
            let ops = [
                (ElemOp::Delete, "a", vec![port(1)]),
                (ElemOp::Add, "b", vec![port(81)]),
                (ElemOp::Delete, "a", vec![port(2)]),
            ];
            let e = nl
                .set_elements_batch(NetfilterProtoFamily::Inet, "t", &ops)
                .unwrap_err();
            let mut buf = vec![0u8; 1 << 16];
            // SAFETY: recv into a buffer of the length given.
            let left = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&nl.sock),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let b = nl
                .set_elements(NetfilterProtoFamily::Inet, "t", "b")
                .unwrap();
            (e.kind(), left, b)
        })
        .unwrap();
        assert_eq!(got.0, io::ErrorKind::NotFound, "the first refusal");
        assert_eq!(got.1, -1, "answers left queued");
        let keys: Vec<Vec<u8>> = got.2.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [80u16.to_be_bytes().to_vec()],
            "the batch was aborted"
        );
    }

    #[test]
    fn comments_are_nftables_user_data() {
        let u = comment_udata("net/ab/eth0").unwrap();
        assert_eq!(&u[..2], &[0, 12]);
        assert_eq!(u.last(), Some(&0));
        assert_eq!(udata_comment(&u).as_deref(), Some("net/ab/eth0"));
        // Another TLV first (type 1, as nft's element flags), then the comment.
        let mut two = vec![1, 4, 1, 0, 0, 0];
        two.extend(&u);
        assert_eq!(udata_comment(&two).as_deref(), Some("net/ab/eth0"));
        assert_eq!(udata_comment(&[0, 9, b'x']), None, "truncated");
        assert!(comment_udata(&"x".repeat(255)).is_none());
    }

    #[test]
    fn a_drop_at_the_end_of_a_chain() {
        let verdict = |code: u32| {
            expr(
                "immediate",
                Expressions::Immediate(vec![
                    Immediate::DestinationRegister(Register::Verdict),
                    Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                        netlink_packet_netfilter::nftables::Verdict::Other(code),
                    )])),
                ]),
            )
        };
        let counter = expr("counter", Expressions::Unknown(vec![]));
        assert!(unconditional_drop(&[counter.clone(), verdict(NF_DROP)]));
        assert!(unconditional_drop(&[expr(
            "reject",
            Expressions::Unknown(vec![])
        )]));
        // Accept, or a match before the drop: not unconditional.
        assert!(!unconditional_drop(&[counter, verdict(1)]));
        assert!(!unconditional_drop(&[
            iifname(Register::Reg1),
            cmp(Register::Reg1, Operator::Equal, b"x\0"),
            verdict(NF_DROP)
        ]));
        assert!(!unconditional_drop(&[]));
    }

    #[test]
    fn iifname_comparisons_read_as_nft_prints_them() {
        let mut padded = b"vq0".to_vec();
        padded.resize(16, 0);
        let rule = vec![
            iifname(Register::Reg1),
            cmp(Register::Reg1, Operator::Equal, b"ve-"),
            iifname(Register::Reg1),
            cmp(Register::Reg1, Operator::Equal, &padded),
            // Not an equality, or not the register iifname went to: not a pattern.
            iifname(Register::Reg1),
            cmp(Register::Reg1, Operator::NotEqual, b"lo\0"),
            iifname(Register::Reg1),
            cmp(Register::Reg2, Operator::Equal, b"x-"),
            // A cmp with no iifname load before it.
            cmp(Register::Reg1, Operator::Equal, b"y-"),
        ];
        assert_eq!(iifname_matches(&rule), ["ve-*", "vq0"]);
    }
}
