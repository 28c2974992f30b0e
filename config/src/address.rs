//! Text forms of the address types: PCI addresses (`0000:3b:00.2`) and MAC addresses
//! (`52:54:00:12:34:56`).

use std::str::FromStr;

use crate::model::{MacAddress, PciAddress};

/// Why a PCI address string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParsePciError {
    /// Not of the form `DDDD:BB:DD.F` or `BB:DD.F` with hexadecimal fields.
    #[error("not a PCI address of the form DDDD:BB:DD.F or BB:DD.F (hexadecimal)")]
    Format,
    /// The device number is above 0x1f.
    #[error("device number 0x{0:x} is above 0x1f")]
    Device(u8),
    /// The function number is above 7.
    #[error("function number {0:x} is above 7")]
    Function(u8),
}

/// Why a MAC address string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseMacError {
    /// Not six two-digit hexadecimal octets separated by `:` (or all by `-`).
    #[error("not six two-digit hexadecimal octets separated by ':' or '-'")]
    Format,
}

/// Parses `digits` as hexadecimal with between 1 and `max_len` digits.
fn hex_field(digits: &str, max_len: usize) -> Option<u16> {
    if digits.is_empty() || digits.len() > max_len || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

impl FromStr for PciAddress {
    type Err = ParsePciError;

    /// Accepts `DDDD:BB:DD.F` and, with domain 0, `BB:DD.F`; hex digits in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = s.split(':').collect();
        let (domain, bus, dev_fn) = match fields.as_slice() {
            [domain, bus, dev_fn] => (hex_field(domain, 4), *bus, *dev_fn),
            [bus, dev_fn] => (Some(0), *bus, *dev_fn),
            _ => return Err(ParsePciError::Format),
        };
        let (device, function) = dev_fn.split_once('.').ok_or(ParsePciError::Format)?;
        let domain = domain.ok_or(ParsePciError::Format)?;
        let bus = hex_field(bus, 2).ok_or(ParsePciError::Format)? as u8;
        let device = hex_field(device, 2).ok_or(ParsePciError::Format)? as u8;
        let function = hex_field(function, 1).ok_or(ParsePciError::Format)? as u8;
        if device > 0x1f {
            return Err(ParsePciError::Device(device));
        }
        if function > 7 {
            return Err(ParsePciError::Function(function));
        }
        Ok(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl FromStr for MacAddress {
    type Err = ParseMacError;

    /// Accepts six two-digit hex octets separated all by `:` or all by `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut octets = [0u8; 6];
        let mut count = 0;
        for part in s.split(sep) {
            let value = match hex_field(part, 2) {
                Some(v) if part.len() == 2 && count < 6 => v as u8,
                _ => return Err(ParseMacError::Format),
            };
            octets[count] = value;
            count += 1;
        }
        if count != 6 {
            return Err(ParseMacError::Format);
        }
        Ok(MacAddress(octets))
    }
}

impl MacAddress {
    /// True for group (multicast or broadcast) addresses: bit 0 of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for 00:00:00:00:00:00, which no interface may use.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(s: &str) -> Result<PciAddress, ParsePciError> {
        s.parse()
    }

    #[test]
    fn pci_full_and_short_forms() {
        let full = pci("0000:3b:00.2").unwrap();
        assert_eq!(
            full,
            PciAddress {
                domain: 0,
                bus: 0x3b,
                device: 0,
                function: 2
            }
        );
        assert_eq!(pci("3b:00.2").unwrap(), full);
        assert_eq!(pci("3B:1F.7").unwrap().to_string(), "0000:3b:1f.7");
        assert_eq!(pci("abcd:ff:1f.0").unwrap().domain, 0xabcd);
    }

    #[test]
    fn pci_rejects_bad_forms() {
        for bad in [
            "",
            "3b:00",
            "3b.00.2",
            "00000:3b:00.2",
            "0000:3b:00:00.2",
            "0000:3bb:00.2",
            "0000:3b:00.",
            "0000:3b:00.12",
            "g0:00.0",
            "+3:00.0",
            " 3b:00.2",
        ] {
            assert_eq!(pci(bad), Err(ParsePciError::Format), "{bad:?}");
        }
        assert_eq!(pci("3b:20.0"), Err(ParsePciError::Device(0x20)));
        assert_eq!(pci("3b:00.8"), Err(ParsePciError::Function(8)));
    }

    #[test]
    fn mac_forms() {
        let mac: MacAddress = "52:54:00:AB:cd:ef".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!("52-54-00-ab-cd-ef".parse::<MacAddress>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00-ab:cd:ef",
            "5:54:00:ab:cd:ef",
            "52:54:00:ab:cd:eg",
            "525400abcdef",
        ] {
            assert_eq!(
                bad.parse::<MacAddress>(),
                Err(ParseMacError::Format),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mac_multicast_and_zero() {
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddress>()
            .unwrap()
            .is_multicast());
        assert!("ff:ff:ff:ff:ff:ff"
            .parse::<MacAddress>()
            .unwrap()
            .is_multicast());
        assert!(!"52:54:00:00:00:01"
            .parse::<MacAddress>()
            .unwrap()
            .is_multicast());
        assert!(MacAddress([0; 6]).is_zero());
    }
}
