//! Reads when a server certificate expires (`notAfter`) from its DER bytes: the one
//! field endpoint checks need, read by walking the few DER elements in front of it
//! rather than by bringing a whole X.509 parser into the server. The certificate itself
//! was already verified by rustls during the handshake; this only reads a date from it.

use crate::domain::Millis;

/// One DER element: its tag and its content.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
}

/// The element at the start of `bytes`, and what follows it.
fn element(bytes: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, rest) = rest.split_at(count);
        let length = digits
            .iter()
            .fold(0usize, |length, &digit| (length << 8) | usize::from(digit));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (content, rest) = rest.split_at(length);
    Some((Element { tag, content }, rest))
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// When the certificate `der` stops being valid, in milliseconds since the Unix epoch;
/// `None` when the bytes are not a certificate this can read.
pub(crate) fn not_after(der: &[u8]) -> Option<Millis> {
    let (certificate, _) = element(der)?;
    let (tbs, _) = element(certificate.content)?;
    if certificate.tag != SEQUENCE || tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.content;
    let (first, after_first) = element(rest)?;
    if first.tag == VERSION {
        rest = after_first;
    }
    // serialNumber, signature, issuer: skipped.
    for _ in 0..3 {
        rest = element(rest)?.1;
    }
    let (validity, _) = element(rest)?;
    if validity.tag != SEQUENCE {
        return None;
    }
    let (_not_before, rest) = element(validity.content)?;
    let (not_after, _) = element(rest)?;
    let text = std::str::from_utf8(not_after.content).ok()?;
    let full = match not_after.tag {
        // Two-digit years: 50 to 99 are 19xx, the rest 20xx (RFC 5280, 4.1.2.5.1).
        UTC_TIME => {
            let year: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if year >= 50 { "19" } else { "20" })
        }
        GENERALIZED_TIME => text.to_owned(),
        _ => return None,
    };
    let at = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%SZ").ok()?;
    Some(at.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_expiry_date_is_read_in_both_time_forms() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 says.
        for (year, month, day) in [(2031, 7, 15), (2049, 12, 31), (2061, 3, 1)] {
            let expected = chrono::NaiveDate::from_ymd_opt(year, u32::from(month), u32::from(day))
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis();
            assert_eq!(
                not_after(&certificate_until(year, month, day)),
                Some(expected),
                "{year}"
            );
        }
    }

    #[test]
    fn bytes_that_are_no_certificate_give_nothing() {
        let good = certificate_until(2031, 1, 1);
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(not_after(&good[..40]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
