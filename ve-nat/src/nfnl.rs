//! nf_tables over netlink, in this process: what `down` needs, without starting `nft`.
//! Starting nft and letting it fetch its cache costs more than the kernel's work: a
//! `down` that deleted table inet ve-nat through two nft processes spent most of its
//! 21-28 ms starting them. Here one socket deletes the table (one transaction,
//! `NFT_MSG_DELTABLE`; not there is ENOENT, which counts as done) and lists chain
//! names (a `NFT_MSG_GETCHAIN` dump) and the interface names one chain's rules match
//! (a `NFT_MSG_GETRULE` dump), with messages built and parsed by
//! `netlink-packet-netfilter`.

use std::{io, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{
        ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
        ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, RuleAttribute, RuleMessage,
        TableAttribute, TableMessage,
    },
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `nfnetlink.h`: the nf_tables subsystem, named in a batch's `res_id`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// Room for one datagram of a dump (the kernel fills what the reader offers).
const RECV_BUF: usize = 64 * 1024;

/// How long an answer may take before the socket gives up.
const TIMEOUT: Duration = Duration::from_secs(5);

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

    /// The chains of `family` as `(table, chain)`.
    pub fn chains(&mut self, family: NetfilterProtoFamily) -> io::Result<Vec<(String, String)>> {
        let mut chains = Vec::new();
        let ask = NfTablesMessage::GetChain(ChainMessage { attributes: vec![] });
        self.dump(family, ask, "chains", false, |m| {
            if let NfTablesMessage::NewChain(c) = m {
                let (mut table, mut name) = (None, None);
                for a in &c.attributes {
                    match a {
                        ChainAttribute::Table(t) => table = Some(t.clone()),
                        ChainAttribute::Name(n) => name = Some(n.clone()),
                        _ => {}
                    }
                }
                if let (Some(t), Some(n)) = (table, name) {
                    chains.push((t, n));
                }
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
        let mut names = Vec::new();
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
            // Kernels filter the dump by table and chain; these lines make sure of it.
            let is = |want: &str, f: fn(&RuleAttribute) -> Option<&String>| {
                r.attributes.iter().filter_map(f).any(|v| v == want)
            };
            let in_table = is(table, |a| match a {
                RuleAttribute::Table(t) => Some(t),
                _ => None,
            });
            let in_chain = is(chain, |a| match a {
                RuleAttribute::Chain(c) => Some(c),
                _ => None,
            });
            if in_table && in_chain {
                for a in &r.attributes {
                    if let RuleAttribute::Expressions(list) = a {
                        names.extend(iifname_matches(list));
                    }
                }
            }
        })?;
        Ok(names)
    }

    /// Send the dump request `ask` for `family` and hand each nf_tables message of the
    /// answer to `each`. A dump the ruleset changed under is an error; so is the
    /// kernel's refusal, but for ENOENT (nothing of the kind there) when `absent_ok`.
    fn dump(
        &mut self,
        family: NetfilterProtoFamily,
        ask: NfTablesMessage,
        what: &str,
        absent_ok: bool,
        mut each: impl FnMut(&NfTablesMessage),
    ) -> io::Result<()> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        emit(
            &mut out,
            seq,
            NLM_F_REQUEST | NLM_F_DUMP,
            NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), ask),
        );
        self.sock.send(&out, 0)?;
        self.read(|m| {
            if m.header.sequence_number != seq {
                return Ok(false);
            }
            if m.header.flags & NLM_F_DUMP_INTR != 0 {
                return Err(io::Error::other(format!(
                    "the ruleset changed while its {what} were listed"
                )));
            }
            match &m.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(c) if absent_ok && -c.get() == libc::ENOENT => Ok(true),
                        Some(_) => Err(e.to_io()),
                        None => Ok(true),
                    }
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(msg),
                    ..
                }) => each(msg),
                _ => {}
            }
            Ok(false)
        })
    }

    /// Hand each message that comes in to `each` until it says the answer is complete.
    fn read(
        &self,
        mut each: impl FnMut(&NetlinkMessage<NetfilterMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            match self.sock.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut at = 0;
            while at + 16 <= buf.len() {
                let m = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[at..])
                    .map_err(|e| io::Error::other(format!("reading nf_tables netlink: {e}")))?;
                let len = m.header.length as usize;
                if len < 16 {
                    return Err(io::Error::other(
                        "a netlink message shorter than its header",
                    ));
                }
                if each(&m)? {
                    return Ok(());
                }
                at += (len + 3) & !3;
            }
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
