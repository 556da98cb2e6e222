//! Structure-aware mutations of real samples: what the property tests
//! generate, so that cases stay close enough to real input to reach the
//! deep parts of a parser instead of its first refusal.

/// Byte strings worth inserting: the places parsers branch on (RFC 2047
/// encoded words, charsets, MIME boundaries and headers, percent escapes,
/// JSON and TOML syntax, phone and address shapes).
pub const TOKENS: &[&[u8]] = &[
    b"=?utf-8?B?0JjQstCw0L0=?=",
    b"=?windows-1251?Q?=C8=E2=E0=ED?=",
    b"=?koi8-r?B?",
    b"=?x-unknown?Q?=FF=FE?=",
    b"=?utf-8?q?",
    b"?=",
    b"; charset=\"windows-1251\"",
    b"; charset=utf-7",
    b"; charset=",
    b"\r\n--",
    b"\r\n--b\r\n",
    b"--\r\n",
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: form-data; name=\"",
    b"; filename*=UTF-8''%D0%A4.pdf",
    b"\r\n\r\n",
    b"\r\n ",
    b"From: ",
    b"Reply-To: <a@b.c>\r\n",
    b"References: <",
    b"<blockquote>",
    b"&#x41;&amp;",
    b"%D0%AF",
    b"%FF",
    b"%",
    b"&",
    b"=",
    b"+7 (999) 123-45-67",
    b"8 800 ",
    b"tel:+",
    b"@",
    b"\\u0000\\ud800",
    b"{\"a\":",
    b"[[[[[[[[",
    b"]]]]",
    b"1e999",
    b"-0.0e-5",
    b"\"\"\"",
    b"'''",
    b"[[channels]]\n",
    b"[telephony.fields]\n",
    b"regex = \"(a+)+$\"\n",
    b"= \"1000000000000d\"\n",
    b"\0",
    b"\xff\xfe",
    b"\xd0",
    b"\xe2\x80\xae",
];

/// One change to an input. Positions and lengths are taken modulo what
/// the input allows, so any values apply to any input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Replace one byte.
    Set { at: usize, byte: u8 },
    /// Flip one bit of one byte.
    FlipBit { at: usize, bit: u8 },
    /// Cut the input short.
    Truncate { at: usize },
    /// Remove up to `len` bytes.
    Delete { at: usize, len: usize },
    /// Insert one of [`TOKENS`].
    InsertToken { at: usize, token: usize },
    /// Copy a slice of another seed in (splicing).
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
    /// Repeat a slice of the input many times (huge lines, deep nesting,
    /// many fields).
    Repeat { at: usize, len: usize, times: usize },
}

/// Largest input a mutation may build; parsers cap their own input far
/// below this, so more would only slow the run down.
pub const MAX_INPUT: usize = 1 << 20;

/// `input` with each mutation applied in turn. `seeds` are what
/// [`Mutation::Splice`] copies from.
pub fn apply(input: &[u8], mutations: &[Mutation], seeds: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for m in mutations {
        let room = |len: usize| len + 1;
        match *m {
            Mutation::Set { at, byte } if !out.is_empty() => {
                let i = at % out.len();
                out[i] = byte;
            }
            Mutation::FlipBit { at, bit } if !out.is_empty() => {
                let i = at % out.len();
                out[i] ^= 1 << (bit % 8);
            }
            Mutation::Truncate { at } => out.truncate(at % room(out.len())),
            Mutation::Delete { at, len } if !out.is_empty() => {
                let a = at % out.len();
                let b = (a + len % 64).min(out.len());
                out.drain(a..b);
            }
            Mutation::InsertToken { at, token } => {
                let i = at % room(out.len());
                let t = TOKENS[token % TOKENS.len()];
                out.splice(i..i, t.iter().copied());
            }
            Mutation::Splice {
                at,
                seed,
                from,
                len,
            } if !seeds.is_empty() => {
                let other = seeds[seed % seeds.len()];
                let a = from % room(other.len());
                let b = (a + len % 4096).min(other.len());
                let i = at % room(out.len());
                out.splice(i..i, other[a..b].iter().copied());
            }
            Mutation::Repeat { at, len, times } if !out.is_empty() => {
                let a = at % out.len();
                let b = (a + 1 + len % 32).min(out.len());
                let chunk = out[a..b].to_vec();
                let times = times % 100_000;
                let times = times.min(MAX_INPUT.saturating_sub(out.len()) / chunk.len());
                let repeated: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take(chunk.len() * times)
                    .collect();
                out.splice(b..b, repeated);
            }
            _ => {}
        }
        if out.len() > MAX_INPUT {
            out.truncate(MAX_INPUT);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_apply_anywhere_and_stay_bounded() {
        let seed: &[u8] = b"a=1&b=2";
        assert_eq!(
            apply(seed, &[Mutation::Set { at: 9, byte: b'X' }], &[]),
            b"a=X&b=2"
        );
        assert_eq!(apply(seed, &[Mutation::Truncate { at: 3 }], &[]), b"a=1");
        assert_eq!(
            apply(
                seed,
                &[Mutation::Repeat {
                    at: 0,
                    len: 1,
                    times: 2
                }],
                &[]
            ),
            b"a=a=a=1&b=2"
        );
        assert_eq!(
            apply(
                b"",
                &[Mutation::Splice {
                    at: 0,
                    seed: 1,
                    from: 1,
                    len: 2
                }],
                &[b"x", b"hello"]
            ),
            b"el"
        );
        let huge = apply(
            seed,
            &[Mutation::Repeat {
                at: 0,
                len: 31,
                times: usize::MAX,
            }],
            &[],
        );
        assert!(huge.len() <= MAX_INPUT);
        assert!(apply(b"", &[Mutation::Set { at: 1, byte: 0 }], &[]).is_empty());
    }
}
