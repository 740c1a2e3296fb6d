//! The message type of ve-link's netlink connections: a route message as
//! netlink-packet-route decodes it, with attributes it cannot decode (a container's
//! root may set any bytes as an interface alias) made harmless instead of dropping the
//! whole reply, which would leave the request waiting for it forever.

use std::convert::Infallible;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, NLA_TYPE_MASK,
};
use netlink_packet_route::RouteNetlinkMessage;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;

/// Link attributes that carry text (`if_link.h`). Undecodable text is kept lossily
/// (U+FFFD for each bad byte): it can then never equal a name or marker of ours, so a
/// link with a non-UTF-8 alias is simply not ve-link's.
const IFLA_STRINGS: [u16; 6] = [
    3,  // IFLA_IFNAME
    6,  // IFLA_QDISC
    20, // IFLA_IFALIAS
    38, // IFLA_PHYS_PORT_NAME
    56, // IFLA_PARENT_DEV_NAME
    57, // IFLA_PARENT_DEV_BUS_NAME
];
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
const IFA_LABEL: u16 = 3;

/// A reply from the kernel (or a request to it).
#[derive(Debug, Clone)]
pub enum Msg {
    Route(RouteNetlinkMessage),
    /// A message that stayed undecodable even with its bad attributes left out; the
    /// request it answers still completes, without it.
    Opaque(u16),
}

impl NetlinkSerializable for Msg {
    fn message_type(&self) -> u16 {
        match self {
            Msg::Route(m) => m.message_type(),
            Msg::Opaque(t) => *t,
        }
    }

    fn buffer_len(&self) -> usize {
        match self {
            Msg::Route(m) => m.buffer_len(),
            Msg::Opaque(_) => 0,
        }
    }

    fn serialize(&self, buffer: &mut [u8]) {
        if let Msg::Route(m) = self {
            m.serialize(buffer);
        }
    }
}

impl NetlinkDeserializable for Msg {
    type Error = Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Infallible> {
        let t = header.message_type;
        let err = match RouteNetlinkMessage::deserialize(header, payload) {
            Ok(m) => return Ok(Msg::Route(m)),
            Err(e) => e,
        };
        let repaired =
            sanitize(t, payload).and_then(|p| RouteNetlinkMessage::deserialize(header, &p).ok());
        Ok(match repaired {
            Some(m) => {
                log::debug!("netlink message type {t}: undecodable attributes kept opaque");
                Msg::Route(m)
            }
            None => {
                log::debug!("netlink message type {t} skipped: {err}");
                Msg::Opaque(t)
            }
        })
    }
}

impl From<RouteNetlinkMessage> for Msg {
    fn from(m: RouteNetlinkMessage) -> Self {
        Msg::Route(m)
    }
}

fn parses(t: u16, payload: &[u8]) -> bool {
    let mut h = NetlinkHeader::default();
    h.message_type = t;
    RouteNetlinkMessage::deserialize(&h, payload).is_ok()
}

/// `payload` with every attribute that does not decode alone replaced: text lossily,
/// anything else left out. None for message types ve-link has no use for.
fn sanitize(t: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let (fixed, strings): (usize, &[u16]) = match t {
        RTM_NEWLINK | RTM_DELLINK => (16, &IFLA_STRINGS),
        RTM_NEWADDR | RTM_DELADDR => (8, &[IFA_LABEL]),
        _ => return None,
    };
    let head = payload.get(..fixed)?;
    let mut out = head.to_vec();
    for (kind, value) in attributes(&payload[fixed..]) {
        let mut one = head.to_vec();
        push_attr(&mut one, kind, value);
        if parses(t, &one) {
            out.extend_from_slice(&one[fixed..]);
            continue;
        }
        let k = kind & NLA_TYPE_MASK;
        if strings.contains(&k) {
            push_attr(&mut out, kind, &lossy(value));
        } else if fixed == 16 && k == IFLA_PROP_LIST {
            // The alternative names, each text.
            let mut nested = Vec::new();
            for (ik, iv) in attributes(value) {
                if ik & NLA_TYPE_MASK == IFLA_ALT_IFNAME {
                    push_attr(&mut nested, ik, &lossy(iv));
                }
            }
            let mut one = head.to_vec();
            push_attr(&mut one, kind, &nested);
            if parses(t, &one) {
                out.extend_from_slice(&one[fixed..]);
            }
        }
        // Anything else undecodable is left out: ve-link reads none of it.
    }
    Some(out)
}

/// Text as NUL-terminated UTF-8, bad bytes replaced.
fn lossy(value: &[u8]) -> Vec<u8> {
    let text = value.strip_suffix(&[0]).unwrap_or(value);
    let mut v = String::from_utf8_lossy(text).into_owned().into_bytes();
    v.push(0);
    v
}

/// The (type, value) pairs of a run of netlink attributes; stops at a malformed one.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or_default();
    }
    out
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    // Netlink attributes are at most 64 KiB, so the length fits.
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    /// The bytes of a NEWLINK reply for `lo` with `alias` as raw bytes.
    fn newlink(alias: &[u8], altname: &[u8]) -> Vec<u8> {
        let mut m = LinkMessage::default();
        m.header.index = 1;
        m.attributes.push(LinkAttribute::IfName("lo".into()));
        m.attributes.push(LinkAttribute::Mtu(65536));
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(m));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        push_attr(&mut buf, 20, alias);
        let mut props = Vec::new();
        push_attr(&mut props, IFLA_ALT_IFNAME, altname);
        push_attr(&mut buf, IFLA_PROP_LIST | 0x8000, &props);
        let len = buf.len() as u32;
        buf[..4].copy_from_slice(&len.to_ne_bytes());
        buf
    }

    fn decode(buf: &[u8]) -> Msg {
        match NetlinkMessage::<Msg>::deserialize(buf).unwrap().payload {
            NetlinkPayload::InnerMessage(m) => m,
            p => panic!("not an inner message: {p:?}"),
        }
    }

    #[test]
    fn a_non_utf8_alias_and_altname_decode_lossily_and_the_rest_is_kept() {
        let buf = newlink(b"\xff\xfe\0", b"x\xffy\0");
        let Msg::Route(RouteNetlinkMessage::NewLink(m)) = decode(&buf) else {
            panic!("not a link")
        };
        assert!(m.attributes.contains(&LinkAttribute::IfName("lo".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(65536)));
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfAlias("\u{fffd}\u{fffd}".into())));
        let alt = m.attributes.iter().any(
            |a| matches!(a, LinkAttribute::PropList(p) if format!("{p:?}").contains("x\u{fffd}y")),
        );
        assert!(alt, "{:?}", m.attributes);
        assert_eq!(
            crate::request::container_of(Some("ve-link:foo\u{fffd}")),
            None
        );
    }

    #[test]
    fn a_valid_message_is_untouched_and_garbage_is_opaque_not_an_error() {
        let buf = newlink(b"ve-link:foo\0", b"ve-foo\0");
        let Msg::Route(RouteNetlinkMessage::NewLink(m)) = decode(&buf) else {
            panic!("not a link")
        };
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfAlias("ve-link:foo".into())));
        // A link message too short for its fixed header.
        let mut h = NetlinkHeader::default();
        h.message_type = RTM_NEWLINK;
        assert!(matches!(
            Msg::deserialize(&h, &[1, 2, 3]),
            Ok(Msg::Opaque(RTM_NEWLINK))
        ));
    }
}
