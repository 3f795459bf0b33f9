//! Just enough X.509 (DER) to explain a certificate: its version, issuer and subject common
//! names, validity, subjectAltName entries and SubjectPublicKeyInfo.
//!
//! Pure parsing, no I/O, no verification: webpki verifies; this only reads what a message
//! needs, and it reads X.509 v1 certificates too (which webpki refuses as end-entity
//! certificates, rightly for a server, but OpenSSL and Mosquitto accept them for a client).
//! Every length is checked against what is left: garbage gives a [`DerError`], never a panic.
//! Names taken from a certificate may come from the network: [`printable`] makes them safe
//! for a log line.

/// What is wrong with the DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    /// The data ends inside an element.
    #[error("truncated DER")]
    Truncated,
    /// An element has another tag than the structure requires.
    #[error("unexpected DER tag {found:#04x} where {expected} was expected")]
    UnexpectedTag {
        /// What the structure needs there.
        expected: &'static str,
        /// The tag found.
        found: u8,
    },
    /// An indefinite, over-long or non-minimal length.
    #[error("invalid DER length")]
    Length,
    /// A time that is not a valid UTCTime / GeneralizedTime.
    #[error("invalid certificate time")]
    Time,
    /// An unknown version number.
    #[error("unknown certificate version {0}")]
    Version(u64),
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// At most this many subjectAltName entries are kept (a message lists them).
pub const MAX_NAMES: usize = 16;

/// A DER reader over a slice.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element: (tag, content, the whole element).
    fn any(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), DerError> {
        let data = self.data;
        let (&tag, rest) = data.split_first().ok_or(DerError::Truncated)?;
        if tag & 0x1f == 0x1f {
            // High tag numbers appear nowhere in what we read.
            return Err(DerError::UnexpectedTag {
                expected: "a low tag number",
                found: tag,
            });
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(if rest.len() < n {
                    DerError::Truncated
                } else {
                    DerError::Length
                });
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if len < 0x80 || bytes[0] == 0 {
                return Err(DerError::Length);
            }
            len
        };
        if rest.len() < len {
            return Err(DerError::Truncated);
        }
        let (content, after) = rest.split_at(len);
        let whole = &data[..data.len() - after.len()];
        self.data = after;
        Ok((tag, content, whole))
    }

    /// The content of the next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8, expected: &'static str) -> Result<&'a [u8], DerError> {
        let (found, content, _) = self.any()?;
        if found != tag {
            return Err(DerError::UnexpectedTag { expected, found });
        }
        Ok(content)
    }

    /// Like [`Reader::expect`], returning the whole element (tag and length included).
    fn expect_whole(&mut self, tag: u8, expected: &'static str) -> Result<&'a [u8], DerError> {
        let (found, _, whole) = self.any()?;
        if found != tag {
            return Err(DerError::UnexpectedTag { expected, found });
        }
        Ok(whole)
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo<'a> {
    /// 1, 2 or 3.
    pub version: u8,
    /// The issuer's common name, if it has one ([`printable`]).
    pub issuer_cn: Option<String>,
    /// The subject's common name, if it has one ([`printable`]).
    pub subject_cn: Option<String>,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// The subjectAltName entries as `DNS:name` / `IP:addr` / `email:...` / `URI:...`
    /// (at most [`MAX_NAMES`]); `None` if the certificate has no subjectAltName extension.
    pub alt_names: Option<Vec<String>>,
    /// The whole SubjectPublicKeyInfo element.
    pub spki: &'a [u8],
}

impl CertInfo<'_> {
    /// `CN=<subject>` or "no common name", for messages.
    pub fn subject(&self) -> String {
        self.subject_cn
            .as_ref()
            .map_or_else(|| "no common name".to_owned(), |cn| format!("CN={cn}"))
    }

    /// `CN=<issuer>` or "an issuer without common name", for messages.
    pub fn issuer(&self) -> String {
        self.issuer_cn.as_ref().map_or_else(
            || "an issuer without common name".to_owned(),
            |cn| format!("CN={cn}"),
        )
    }
}

/// Reads a DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo<'_>, DerError> {
    let mut outer = Reader::new(der);
    let cert = outer.expect(SEQUENCE, "Certificate")?;
    let mut cert = Reader::new(cert);
    let tbs = cert.expect(SEQUENCE, "TBSCertificate")?;
    let mut tbs = Reader::new(tbs);
    let version = if tbs.peek() == Some(VERSION) {
        let explicit = tbs.expect(VERSION, "version")?;
        let v = unsigned(Reader::new(explicit).expect(INTEGER, "version INTEGER")?)?;
        match v {
            0..=2 => v as u8 + 1,
            other => return Err(DerError::Version(other)),
        }
    } else {
        1
    };
    tbs.expect(INTEGER, "serialNumber")?;
    tbs.expect(SEQUENCE, "signature AlgorithmIdentifier")?;
    let issuer_cn = common_name(tbs.expect(SEQUENCE, "issuer Name")?)?;
    let mut validity = Reader::new(tbs.expect(SEQUENCE, "Validity")?);
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    let subject_cn = common_name(tbs.expect(SEQUENCE, "subject Name")?)?;
    let spki = tbs.expect_whole(SEQUENCE, "SubjectPublicKeyInfo")?;
    let mut alt_names = None;
    while !tbs.is_empty() {
        let (tag, content, _) = tbs.any()?;
        // [1] issuerUniqueID and [2] subjectUniqueID are skipped.
        if tag == EXTENSIONS {
            alt_names = subject_alt_names(content)?;
        }
    }
    Ok(CertInfo {
        version,
        issuer_cn,
        subject_cn,
        not_before,
        not_after,
        alt_names,
        spki,
    })
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo (without the unused-bits byte): the
/// key itself, whatever encoding its AlgorithmIdentifier's parameters use.
pub fn public_key_bits(spki: &[u8]) -> Result<&[u8], DerError> {
    let mut outer = Reader::new(spki);
    let mut inner = Reader::new(outer.expect(SEQUENCE, "SubjectPublicKeyInfo")?);
    inner.expect(SEQUENCE, "AlgorithmIdentifier")?;
    let bits = inner.expect(BIT_STRING, "subjectPublicKey")?;
    match bits.split_first() {
        Some((0, key)) => Ok(key),
        Some(_) => Err(DerError::Length),
        None => Err(DerError::Truncated),
    }
}

/// The subject common name of a DER certificate, if it can be read.
pub fn subject_of(der: &[u8]) -> Option<String> {
    parse(der).ok().and_then(|c| c.subject_cn)
}

fn unsigned(content: &[u8]) -> Result<u64, DerError> {
    if content.is_empty() || content.len() > 8 {
        return Err(DerError::Length);
    }
    Ok(content
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// The first common name of a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn common_name(name: &[u8]) -> Result<Option<String>, DerError> {
    let mut rdns = Reader::new(name);
    while !rdns.is_empty() {
        let mut set = Reader::new(rdns.expect(SET, "RelativeDistinguishedName")?);
        while !set.is_empty() {
            let mut atv = Reader::new(set.expect(SEQUENCE, "AttributeTypeAndValue")?);
            let oid = atv.expect(OID, "attribute type")?;
            let (tag, value, _) = atv.any()?;
            if oid == OID_COMMON_NAME {
                return Ok(Some(text(tag, value)));
            }
        }
    }
    Ok(None)
}

/// A directory string as text: UTF-16 for BMPString, else UTF-8 (lossy), made printable.
fn text(tag: u8, value: &[u8]) -> String {
    const BMP_STRING: u8 = 0x1e;
    let raw = if tag == BMP_STRING {
        let units: Vec<u16> = value
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    printable(&raw)
}

/// `s` with control characters replaced by `?` and cut to 64 characters (`…` marks a cut):
/// safe to put in a log line.
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

fn time(r: &mut Reader<'_>) -> Result<i64, DerError> {
    let (tag, content, _) = r.any()?;
    let s = std::str::from_utf8(content).map_err(|_| DerError::Time)?;
    let (year, rest) = match tag {
        UTC_TIME if s.len() == 13 => {
            let yy: i64 = digits(&s[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        GENERALIZED_TIME if s.len() == 15 => (digits(&s[..4])?, &s[4..]),
        UTC_TIME | GENERALIZED_TIME => return Err(DerError::Time),
        found => {
            return Err(DerError::UnexpectedTag {
                expected: "UTCTime or GeneralizedTime",
                found,
            })
        }
    };
    if !rest.ends_with('Z') {
        return Err(DerError::Time);
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(DerError::Time);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(s: &str) -> Result<i64, DerError> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| DerError::Time)
    } else {
        Err(DerError::Time)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The subjectAltName entries of an `[3] Extensions` content; `None` without the extension.
fn subject_alt_names(explicit: &[u8]) -> Result<Option<Vec<String>>, DerError> {
    let mut exts = Reader::new(Reader::new(explicit).expect(SEQUENCE, "Extensions")?);
    while !exts.is_empty() {
        let mut ext = Reader::new(exts.expect(SEQUENCE, "Extension")?);
        let oid = ext.expect(OID, "extnID")?;
        if ext.peek() == Some(BOOLEAN) {
            ext.expect(BOOLEAN, "critical")?;
        }
        let value = ext.expect(OCTET_STRING, "extnValue")?;
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        let mut names = Reader::new(Reader::new(value).expect(SEQUENCE, "GeneralNames")?);
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, content, _) = names.any()?;
            let name = match tag {
                0x81 => format!("email:{}", text(0, content)),
                0x82 => format!("DNS:{}", text(0, content)),
                0x86 => format!("URI:{}", text(0, content)),
                0x87 => match content.len() {
                    4 => format!(
                        "IP:{}",
                        std::net::Ipv4Addr::new(content[0], content[1], content[2], content[3])
                    ),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(content);
                        format!("IP:{}", std::net::Ipv6Addr::from(b))
                    }
                    _ => "IP:(invalid)".to_owned(),
                },
                _ => "(other name)".to_owned(),
            };
            if out.len() < MAX_NAMES {
                out.push(name);
            }
        }
        return Ok(Some(out));
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DER element.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn name(cn: &str) -> Vec<u8> {
        let atv = [tlv(OID, OID_COMMON_NAME), tlv(0x0c, cn.as_bytes())].concat();
        tlv(SEQUENCE, &tlv(SET, &tlv(SEQUENCE, &atv)))
    }

    /// A certificate (unsigned, which the parser does not look at) with these parts.
    fn cert(version: Option<u8>, extensions: Option<Vec<u8>>) -> Vec<u8> {
        let spki = tlv(
            SEQUENCE,
            &[
                tlv(SEQUENCE, &tlv(OID, &[0x2b, 0x65, 0x70])),
                tlv(BIT_STRING, &[0, 1, 2, 3]),
            ]
            .concat(),
        );
        test_cert(version, &spki, extensions)
    }

    /// A certificate with a bogus signature, for `spki` (DER), issued by CN=Test CA to
    /// CN=broker\u{7}, valid 2025-01-01 to 2050-01-01.
    pub(crate) fn test_cert(
        version: Option<u8>,
        spki: &[u8],
        extensions: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let mut tbs = Vec::new();
        if let Some(v) = version {
            tbs.extend(tlv(VERSION, &tlv(INTEGER, &[v])));
        }
        tbs.extend(tlv(INTEGER, &[7]));
        tbs.extend(tlv(SEQUENCE, &tlv(OID, &[0x2b, 0x65, 0x70])));
        tbs.extend(name("Test CA"));
        tbs.extend(tlv(
            SEQUENCE,
            &[
                tlv(UTC_TIME, b"250101000000Z"),
                tlv(GENERALIZED_TIME, b"20500101120000Z"),
            ]
            .concat(),
        ));
        tbs.extend(name("broker\u{7}"));
        tbs.extend(spki);
        if let Some(ext) = extensions {
            tbs.extend(tlv(EXTENSIONS, &tlv(SEQUENCE, &ext)));
        }
        tlv(
            SEQUENCE,
            &[
                tlv(SEQUENCE, &tbs),
                tlv(SEQUENCE, &tlv(OID, &[0x2b, 0x65, 0x70])),
                tlv(BIT_STRING, &[0, 9, 9]),
            ]
            .concat(),
        )
    }

    fn san(names: &[u8]) -> Vec<u8> {
        tlv(
            SEQUENCE,
            &[
                tlv(OID, OID_SUBJECT_ALT_NAME),
                tlv(OCTET_STRING, &tlv(SEQUENCE, names)),
            ]
            .concat(),
        )
    }

    #[test]
    fn a_v1_certificate_is_read() {
        let der = cert(None, None);
        let c = parse(&der).expect("parses");
        assert_eq!(c.version, 1);
        assert_eq!(c.issuer_cn.as_deref(), Some("Test CA"));
        // A control character from the certificate never reaches a log line.
        assert_eq!(c.subject_cn.as_deref(), Some("broker?"));
        assert_eq!(c.not_before, 1_735_689_600); // 2025-01-01T00:00:00Z
        assert_eq!(c.not_after, 2_524_651_200); // 2050-01-01T12:00:00Z
        assert_eq!(c.alt_names, None);
        assert_eq!(public_key_bits(c.spki), Ok(&[1u8, 2, 3][..]));
    }

    #[test]
    fn subject_alt_names_of_a_v3_certificate_are_listed() {
        let names = [
            tlv(0x82, b"broker.example"),
            tlv(0x87, &[127, 0, 0, 1]),
            tlv(0x87, &[0; 16]),
        ]
        .concat();
        // Another extension first, marked critical.
        let basic = tlv(
            SEQUENCE,
            &[
                tlv(OID, &[0x55, 0x1d, 0x13]),
                tlv(BOOLEAN, &[0xff]),
                tlv(OCTET_STRING, &tlv(SEQUENCE, &[])),
            ]
            .concat(),
        );
        let der = cert(Some(2), Some([basic.clone(), san(&names)].concat()));
        let c = parse(&der).expect("parses");
        assert_eq!(c.version, 3);
        assert_eq!(
            c.alt_names,
            Some(vec![
                "DNS:broker.example".to_owned(),
                "IP:127.0.0.1".to_owned(),
                "IP:::".to_owned()
            ])
        );
        // v3 without a subjectAltName extension.
        let c = parse(&cert(Some(2), Some(basic))).map(|c| c.alt_names);
        assert_eq!(c, Ok(None));
    }

    #[test]
    fn garbage_and_truncations_are_errors_not_panics() {
        let der = cert(Some(2), Some(san(&tlv(0x82, b"x.example"))));
        for cut in 0..der.len() {
            assert!(parse(&der[..cut]).is_err(), "accepted {cut} bytes");
        }
        assert_eq!(
            parse(&[0x30, 0x80, 0, 0]).map(|_| ()),
            Err(DerError::Length)
        );
        assert_eq!(
            parse(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]).map(|_| ()),
            Err(DerError::Length)
        );
        assert!(parse(&cert(Some(9), None)).is_err());
        assert!(public_key_bits(b"not der").is_err());
    }

    #[test]
    fn long_names_are_cut() {
        let long = "a".repeat(100);
        let p = printable(&long);
        assert_eq!(p.chars().count(), 65);
        assert!(p.ends_with('…'));
        assert_eq!(printable("ok\nname"), "ok?name");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
            let _ = public_key_bits(&bytes);
        }
    }
}
