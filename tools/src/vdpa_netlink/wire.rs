//! Netlink wire format: message and attribute encoding and decoding, no I/O.
//!
//! Layouts from `include/uapi/linux/netlink.h` and `genetlink.h`: every message is a
//! 16-byte `nlmsghdr` (length, type, flags, sequence, port id; native byte order) padded
//! to 4 bytes; a generic netlink message adds a 4-byte `genlmsghdr` (command, version,
//! reserved) followed by attributes, each a 4-byte `nlattr` (length without padding,
//! type) and its payload padded to 4 bytes.

use super::VdpaNetlinkError;

/// `NETLINK_GENERIC`, the protocol of generic netlink sockets.
pub const NETLINK_GENERIC: i32 = 16;
/// Netlink message type of the generic netlink controller.
pub const GENL_ID_CTRL: u16 = 0x10;
/// Controller command that resolves a family name to its id.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// Controller attribute: family id (u16).
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// Controller attribute: family name (string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// `NLM_F_REQUEST`: a request.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`: part of a multipart reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`: ask for an acknowledgement (an error message with error 0).
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): dump every object.
pub const NLM_F_DUMP: u16 = 0x300;
/// In an error message: the request's payload is not echoed.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// `NLMSG_ERROR`: an error or an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// Extended ack attribute: a human-readable message (string).
pub const NLMSGERR_ATTR_MSG: u16 = 1;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct genlmsghdr`.
pub const GENL_HDRLEN: usize = 4;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// The flag bits of an attribute type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Rounds `len` up to netlink's 4-byte alignment.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn malformed(what: impl Into<String>) -> VdpaNetlinkError {
    VdpaNetlinkError::Malformed(what.into())
}

/// Appends one attribute (header, payload, zero padding) to `buf`.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = NLA_HDRLEN + payload.len();
    let len16 = u16::try_from(len).expect("netlink attribute longer than 64 KiB");
    buf.extend_from_slice(&len16.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + align(len) - len, 0);
}

/// Appends a NUL-terminated string attribute (`NLA_NUL_STRING`, as the kernel expects).
pub fn put_str_attr(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let mut payload = Vec::with_capacity(value.len() + 1);
    payload.extend_from_slice(value.as_bytes());
    payload.push(0);
    put_attr(buf, kind, &payload);
}

/// Builds a complete generic netlink request: `nlmsghdr`, `genlmsghdr`, then `attrs`
/// (already encoded with [`put_attr`]).
pub fn genl_request(
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut buf = Vec::with_capacity(align(len));
    buf.extend_from_slice(&u32::try_from(len).expect("request too long").to_ne_bytes());
    buf.extend_from_slice(&family.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: 0 = the kernel
    buf.extend_from_slice(&[cmd, version, 0, 0]);
    buf.extend_from_slice(attrs);
    buf.resize(align(len), 0);
    buf
}

/// One attribute of a received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The attribute type, without the nested/byte-order flag bits.
    pub kind: u16,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

impl Attr<'_> {
    /// The payload as a string, up to its NUL terminator.
    pub fn as_str(&self) -> Result<String, VdpaNetlinkError> {
        let bytes = self.payload.split(|b| *b == 0).next().unwrap_or(&[]);
        String::from_utf8(bytes.to_vec())
            .map_err(|_| malformed(format!("attribute {} is not UTF-8", self.kind)))
    }

    fn fixed<const N: usize>(&self) -> Result<[u8; N], VdpaNetlinkError> {
        self.payload
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                malformed(format!(
                    "attribute {} has {} bytes, want {N}",
                    self.kind,
                    self.payload.len()
                ))
            })
    }

    /// The payload as a native-endian u16.
    pub fn as_u16(&self) -> Result<u16, VdpaNetlinkError> {
        self.fixed::<2>().map(u16::from_ne_bytes)
    }

    /// The payload as a native-endian u32.
    pub fn as_u32(&self) -> Result<u32, VdpaNetlinkError> {
        self.fixed::<4>().map(u32::from_ne_bytes)
    }

    /// The payload as a native-endian u64.
    pub fn as_u64(&self) -> Result<u64, VdpaNetlinkError> {
        self.fixed::<8>().map(u64::from_ne_bytes)
    }
}

/// Splits an attribute stream into attributes. Pad attributes (type 0, which the kernel
/// inserts before 64-bit values to align them) are returned like any other.
pub fn parse_attrs(mut buf: &[u8]) -> Result<Vec<Attr<'_>>, VdpaNetlinkError> {
    let mut attrs = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            return Err(malformed(format!(
                "attribute {kind} claims {len} bytes, {} left",
                buf.len()
            )));
        }
        attrs.push(Attr {
            kind,
            payload: &buf[NLA_HDRLEN..len],
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    if !buf.is_empty() {
        return Err(malformed(format!(
            "{} stray bytes after the attributes",
            buf.len()
        )));
    }
    Ok(attrs)
}

/// A received netlink message, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A generic netlink message: its command and attribute stream.
    Genl {
        /// Sequence number (that of the request it answers).
        seq: u32,
        /// `genlmsghdr.cmd`.
        cmd: u8,
        /// The attributes, undecoded (see [`parse_attrs`]).
        attrs: &'a [u8],
    },
    /// `NLMSG_ERROR` with error 0: the request succeeded.
    Ack {
        /// Sequence number of the acknowledged request.
        seq: u32,
    },
    /// `NLMSG_ERROR` with an error: the request failed.
    Error {
        /// Sequence number of the failed request.
        seq: u32,
        /// The (positive) errno.
        errno: i32,
        /// The extended ack message, if the kernel set one.
        message: Option<String>,
    },
    /// `NLMSG_DONE`: the end of a dump; `errno` is nonzero if the dump failed.
    Done {
        /// Sequence number of the dump request.
        seq: u32,
        /// The (positive) errno of a failed dump, 0 otherwise.
        errno: i32,
        /// The extended ack message, if the kernel set one.
        message: Option<String>,
    },
    /// Any other message type (ignored by the client).
    Other {
        /// Sequence number.
        seq: u32,
        /// `nlmsghdr.nlmsg_type`.
        kind: u16,
    },
}

/// The extended ack message among the TLVs of an error or done message.
fn extack_message(tlvs: &[u8]) -> Option<String> {
    parse_attrs(tlvs)
        .ok()?
        .into_iter()
        .find(|a| a.kind == NLMSGERR_ATTR_MSG)
        .and_then(|a| a.as_str().ok())
        .filter(|m| !m.is_empty())
}

fn read_i32(buf: &[u8]) -> Result<i32, VdpaNetlinkError> {
    buf.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed("error message without an error code"))
}

/// Splits one received datagram into its messages.
pub fn parse_messages(mut buf: &[u8]) -> Result<Vec<Message<'_>>, VdpaNetlinkError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(malformed(format!(
                "{} bytes left, less than a header",
                buf.len()
            )));
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(malformed(format!(
                "message claims {len} bytes, {} left",
                buf.len()
            )));
        }
        let body = &buf[NLMSG_HDRLEN..len];
        out.push(match kind {
            NLMSG_ERROR => {
                let error = read_i32(body)?;
                if error == 0 {
                    Message::Ack { seq }
                } else {
                    // The request's header follows, then its payload unless capped, then
                    // the extended ack TLVs.
                    let echoed = if flags & NLM_F_CAPPED != 0 {
                        NLMSG_HDRLEN
                    } else {
                        body.get(4..8)
                            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                            .unwrap_or(NLMSG_HDRLEN)
                    };
                    let message = if flags & NLM_F_ACK_TLVS != 0 {
                        body.get(4 + align(echoed)..).and_then(extack_message)
                    } else {
                        None
                    };
                    Message::Error {
                        seq,
                        errno: error.saturating_neg(),
                        message,
                    }
                }
            }
            NLMSG_DONE => {
                let error = if body.len() >= 4 { read_i32(body)? } else { 0 };
                let message = if flags & NLM_F_ACK_TLVS != 0 {
                    body.get(4..).and_then(extack_message)
                } else {
                    None
                };
                Message::Done {
                    seq,
                    errno: error.saturating_neg(),
                    message,
                }
            }
            // Control messages (NOOP, OVERRUN) and other families' types below 0x10.
            k if k < GENL_ID_CTRL => Message::Other { seq, kind },
            _ => {
                if body.len() < GENL_HDRLEN {
                    return Err(malformed("generic netlink message without its header"));
                }
                Message::Genl {
                    seq,
                    cmd: body[0],
                    attrs: &body[GENL_HDRLEN..],
                }
            }
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the kernel would send it: header then body, padded.
    fn kernel_msg(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align(len), 0);
        m
    }

    #[test]
    fn string_attribute_is_nul_terminated_and_padded() {
        let mut buf = Vec::new();
        put_str_attr(&mut buf, 4, "vduse");
        // 4 header + 6 payload ("vduse\0") = 10, padded to 12 with zeros.
        assert_eq!(buf.len(), 12);
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), 10);
        assert_eq!(u16::from_ne_bytes([buf[2], buf[3]]), 4);
        assert_eq!(&buf[4..10], b"vduse\0");
        assert_eq!(&buf[10..], &[0, 0]);
        // An aligned payload gets no padding.
        let mut buf = Vec::new();
        put_str_attr(&mut buf, 2, "abc");
        assert_eq!(buf.len(), 8);
    }

    #[test]
    fn request_header_fields() {
        let mut attrs = Vec::new();
        put_str_attr(&mut attrs, 4, "vdpa0");
        put_str_attr(&mut attrs, 2, "vduse");
        let req = genl_request(0x1234, NLM_F_REQUEST | NLM_F_ACK, 7, 3, 1, &attrs);
        assert_eq!(req.len(), 16 + 4 + 12 + 12);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x1234);
        assert_eq!(
            u16::from_ne_bytes([req[6], req[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(req[12..16].try_into().unwrap()), 0);
        assert_eq!(&req[16..20], &[3, 1, 0, 0]);
        let parsed = parse_attrs(&req[20..]).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (parsed[0].kind, parsed[0].as_str().unwrap().as_str()),
            (4, "vdpa0")
        );
        assert_eq!(
            (parsed[1].kind, parsed[1].as_str().unwrap().as_str()),
            (2, "vduse")
        );
    }

    #[test]
    fn attributes_round_trip_with_pad_and_flags() {
        let mut buf = Vec::new();
        put_attr(&mut buf, 15, &65535u32.to_ne_bytes());
        put_attr(&mut buf, 0, &[]); // pad before a u64, as nla_put_u64_64bit does
        put_attr(&mut buf, 16, &0x1_0000_0001u64.to_ne_bytes());
        put_attr(&mut buf, 8, &256u16.to_ne_bytes());
        // A nested-flagged type (0x8000 | 9) decodes as 9.
        put_attr(&mut buf, 0x8000 | 9, &[1, 2, 3]);
        let a = parse_attrs(&buf).unwrap();
        assert_eq!(
            a.iter().map(|a| a.kind).collect::<Vec<_>>(),
            vec![15, 0, 16, 8, 9]
        );
        assert_eq!(a[0].as_u32().unwrap(), 65535);
        assert_eq!(a[2].as_u64().unwrap(), 0x1_0000_0001);
        assert_eq!(a[3].as_u16().unwrap(), 256);
        assert_eq!(a[4].payload, &[1, 2, 3]);
        assert!(a[4].as_u32().is_err(), "3 bytes are not a u32");
    }

    #[test]
    fn malformed_attributes_are_rejected() {
        // Length below the header size.
        let bad = [2u8, 0, 1, 0];
        assert!(parse_attrs(&bad).is_err());
        // Length past the end.
        let mut buf = Vec::new();
        put_attr(&mut buf, 1, &[0; 8]);
        assert!(parse_attrs(&buf[..8]).is_err());
        // Trailing bytes shorter than a header.
        let mut buf = Vec::new();
        put_attr(&mut buf, 1, &[0; 4]);
        buf.extend_from_slice(&[0, 0]);
        assert!(parse_attrs(&buf).is_err());
        // The last attribute's padding may be missing (the kernel never sends that,
        // but a trimmed buffer is still well-formed).
        let mut buf = Vec::new();
        put_str_attr(&mut buf, 1, "a");
        assert_eq!(parse_attrs(&buf[..6]).unwrap()[0].as_str().unwrap(), "a");
    }

    #[test]
    fn dump_datagram_with_several_messages_and_done() {
        let mut a1 = vec![5, 1, 0, 0];
        put_str_attr(&mut a1, 2, "vduse");
        let mut a2 = vec![5, 1, 0, 0];
        put_str_attr(&mut a2, 1, "pci");
        put_str_attr(&mut a2, 2, "0000:00:04.0");
        let mut dgram = kernel_msg(0x1b, NLM_F_MULTI, 9, &a1);
        dgram.extend(kernel_msg(0x1b, NLM_F_MULTI, 9, &a2));
        dgram.extend(kernel_msg(NLMSG_DONE, NLM_F_MULTI, 9, &0i32.to_ne_bytes()));
        let msgs = parse_messages(&dgram).unwrap();
        assert_eq!(msgs.len(), 3);
        match &msgs[1] {
            Message::Genl { seq, cmd, attrs } => {
                assert_eq!((*seq, *cmd), (9, 5));
                let a = parse_attrs(attrs).unwrap();
                assert_eq!(a[1].as_str().unwrap(), "0000:00:04.0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            msgs[2],
            Message::Done {
                seq: 9,
                errno: 0,
                message: None
            }
        );
    }

    #[test]
    fn error_with_extended_ack_uncapped_and_capped() {
        let req = genl_request(0x1b, NLM_F_REQUEST | NLM_F_ACK, 3, 3, 1, &{
            let mut a = Vec::new();
            put_str_attr(&mut a, 4, "x");
            put_str_attr(&mut a, 2, "nosuch");
            a
        });
        let mut tlvs = Vec::new();
        put_str_attr(
            &mut tlvs,
            NLMSGERR_ATTR_MSG,
            "vdpa: Fail to find the specified management device",
        );
        put_attr(&mut tlvs, 2, &32u32.to_ne_bytes()); // NLMSGERR_ATTR_OFFS
                                                      // Uncapped: error code, the whole request, then the TLVs.
        let mut body = (-libc::ENODEV).to_ne_bytes().to_vec();
        body.extend_from_slice(&req);
        body.extend_from_slice(&tlvs);
        let m = kernel_msg(NLMSG_ERROR, NLM_F_ACK_TLVS, 3, &body);
        let want = Message::Error {
            seq: 3,
            errno: libc::ENODEV,
            message: Some("vdpa: Fail to find the specified management device".into()),
        };
        assert_eq!(parse_messages(&m).unwrap(), vec![want]);
        // Capped: only the request's header is echoed.
        let mut body = (-libc::ENODEV).to_ne_bytes().to_vec();
        body.extend_from_slice(&req[..NLMSG_HDRLEN]);
        body.extend_from_slice(&tlvs);
        let m = kernel_msg(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, 3, &body);
        match &parse_messages(&m).unwrap()[0] {
            Message::Error { errno, message, .. } => {
                assert_eq!(*errno, libc::ENODEV);
                assert!(message.as_deref().unwrap().contains("management device"));
            }
            other => panic!("{other:?}"),
        }
        // No TLVs: no message. Error 0: an ack.
        let mut body = (-libc::EINVAL).to_ne_bytes().to_vec();
        body.extend_from_slice(&req);
        let m = kernel_msg(NLMSG_ERROR, 0, 3, &body);
        assert_eq!(
            parse_messages(&m).unwrap(),
            vec![Message::Error {
                seq: 3,
                errno: libc::EINVAL,
                message: None
            }]
        );
        let mut body = 0i32.to_ne_bytes().to_vec();
        body.extend_from_slice(&req[..NLMSG_HDRLEN]);
        let m = kernel_msg(NLMSG_ERROR, NLM_F_CAPPED, 3, &body);
        assert_eq!(parse_messages(&m).unwrap(), vec![Message::Ack { seq: 3 }]);
    }

    #[test]
    fn truncated_messages_are_rejected() {
        let m = kernel_msg(0x1b, 0, 1, &[5, 1, 0, 0]);
        assert!(parse_messages(&m[..10]).is_err(), "short header");
        assert!(parse_messages(&m[..18]).is_err(), "length past the end");
        let m = kernel_msg(0x1b, 0, 1, &[5, 1]);
        assert!(parse_messages(&m[..18]).is_err(), "no genl header");
        let m = kernel_msg(NLMSG_ERROR, 0, 1, &[]);
        assert!(parse_messages(&m).is_err(), "error without code");
    }
}
