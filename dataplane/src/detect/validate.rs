//! Validators: checksums and structure checks that turn a pattern match into a finding.
//! Each takes the matched text and says whether it is a real instance of its kind.

/// Digits of `s`, ignoring spaces and dashes (the separators card and account numbers use).
fn digits(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '0'..='9' => out.push(c as u8 - b'0'),
            ' ' | '-' => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Payment card number: 12–19 digits passing the Luhn check, not all one digit.
pub fn luhn(s: &str) -> bool {
    let Some(d) = digits(s) else { return false };
    if !(12..=19).contains(&d.len()) || d.iter().all(|x| *x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum % 10 == 0
}

/// IBAN lengths by country (ISO 13616 registry, the countries most seen in practice).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AT", 20), ("BE", 16), ("BG", 22), ("BH", 22), ("BR", 29), ("CH", 21),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DK", 18), ("EE", 20), ("ES", 24), ("FI", 18), ("FR", 27),
    ("GB", 22), ("GR", 27), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IS", 26), ("IT", 27),
    ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21), ("MC", 27), ("MT", 31), ("NL", 18), ("NO", 15),
    ("PL", 28), ("PT", 25), ("RO", 24), ("SA", 24), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27),
    ("TR", 26), ("UA", 29),
];

/// IBAN: known country, right length, ISO 7064 mod-97 = 1. Spaces are allowed.
pub fn iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').map(|b| b.to_ascii_uppercase()).collect();
    if compact.len() < 15 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let country = std::str::from_utf8(&compact[..2]).unwrap_or("");
    match IBAN_LENGTHS.iter().find(|(c, _)| *c == country) {
        Some((_, n)) if *n == compact.len() => {}
        _ => return false,
    }
    if !compact[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = if b.is_ascii_digit() { (b - b'0') as u32 } else { (b - b'A') as u32 + 10 };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// US bank routing (ABA) number: 9 digits, weights 3-7-1, and a valid Federal Reserve prefix.
pub fn aba_routing(s: &str) -> bool {
    let Some(d) = digits(s) else { return false };
    if d.len() != 9 {
        return false;
    }
    let prefix = d[0] * 10 + d[1];
    if !matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80) || d.iter().all(|x| *x == 0) {
        return false;
    }
    let w = [3u32, 7, 1];
    d.iter().enumerate().map(|(i, &x)| x as u32 * w[i % 3]).sum::<u32>() % 10 == 0
}

/// US Social Security number in the ranges the SSA issues: area not 000, 666 or 9xx; group
/// not 00; serial not 0000; and not the well-known advertising number 078-05-1120.
pub fn us_ssn(s: &str) -> bool {
    let Some(d) = digits(s) else { return false };
    if d.len() != 9 {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !(area == 78 && group == 5 && serial == 1120)
}

/// A globally routable address: not private, loopback, link-local, CGNAT, multicast,
/// broadcast, unspecified or documentation (RFC 5737, RFC 3849).
pub fn public_ip(s: &str) -> bool {
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            let o = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_unspecified()
                || ip.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 240)
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            let seg = ip.segments();
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] == 0x2001 && seg[1] == 0x0db8))
                && (seg[0] & 0xe000) == 0x2000
        }
        Err(_) => false,
    }
}

/// Shannon entropy in bits per character, to tell a generated secret from a word.
///
/// Computed as log2(n) − Σ c·log2(c) / n over the byte counts c: a byte seen once adds
/// nothing, so a generated value (mostly distinct bytes) costs few logarithms.
pub fn entropy(s: &str) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    let repeated: f64 = counts.iter().filter(|c| **c > 1).map(|&c| f64::from(c) * f64::from(c).log2()).sum();
    n.log2() - repeated / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cards() {
        for good in ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011111111111117", "3530111333300000", "30569309025904"] {
            assert!(luhn(good), "{good}");
        }
        for bad in ["4111 1111 1111 1112", "0000000000000000", "1234", "4111x1111111111111"] {
            assert!(!luhn(bad), "{bad}");
        }
    }

    #[test]
    fn ibans() {
        for good in ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR1420041010050500013M02606", "NL91ABNA0417164300"] {
            assert!(iban(good), "{good}");
        }
        for bad in ["GB82 WEST 1234 5698 7654 33", "XX82WEST12345698765432", "DE8937040044053201300", "GB82-WEST"] {
            assert!(!iban(bad), "{bad}");
        }
    }

    #[test]
    fn routing_and_ssn() {
        assert!(aba_routing("011000015") && aba_routing("121000358"));
        assert!(!aba_routing("011000016") && !aba_routing("991000017") && !aba_routing("000000000"));
        assert!(us_ssn("123-45-6789") && us_ssn("536 22 1029"));
        for bad in ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "078-05-1120", "12-345-678"] {
            assert!(!us_ssn(bad), "{bad}");
        }
    }

    proptest! {
        /// The same value as the textbook sum −Σ p·log2(p).
        #[test]
        fn entropy_is_shannons(s in "[a-c0-9+/A-Z]{0,80}") {
            let n = s.len() as f64;
            let mut counts = std::collections::HashMap::new();
            for b in s.bytes() {
                *counts.entry(b).or_insert(0u32) += 1;
            }
            let want: f64 = counts.values().map(|&c| {
                let p = f64::from(c) / n;
                -p * p.log2()
            }).sum();
            prop_assert!((entropy(&s) - want).abs() < 1e-9, "{} vs {}", entropy(&s), want);
        }
    }

    #[test]
    fn entropy_separates_secrets_from_words() {
        assert!(entropy("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") > 4.0);
        assert!(entropy("passwordpassword") < 3.0);
        assert_eq!(entropy(""), 0.0);
    }

    fn luhn_digit(body: &[u8]) -> u8 {
        let sum: u32 = body.iter().rev().enumerate().map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 0 { let y = x * 2; if y > 9 { y - 9 } else { y } } else { x }
        }).sum();
        ((10 - sum % 10) % 10) as u8
    }

    proptest! {
        /// Any body with its computed check digit passes; changing one digit fails.
        #[test]
        fn luhn_accepts_valid_and_catches_single_digit_errors(body in proptest::collection::vec(0u8..10, 14..18), pos in 0usize..14, delta in 1u8..10) {
            let mut d = body.clone();
            d.push(luhn_digit(&body));
            prop_assume!(!d.iter().all(|x| *x == d[0]));
            let s: String = d.iter().map(|x| (b'0' + x) as char).collect();
            prop_assert!(luhn(&s));
            let mut e = d.clone();
            e[pos] = (e[pos] + delta) % 10;
            let t: String = e.iter().map(|x| (b'0' + x) as char).collect();
            prop_assert!(!luhn(&t) || e.iter().all(|x| *x == e[0]));
        }
    }
}
