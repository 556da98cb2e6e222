//! How a target's input is laid out in one byte string. Text headers keep
//! the seeds readable and let the fuzzer mutate the framing too.

/// A form post: the `Content-Type` value on the first line (empty: none),
/// the body after it.
pub fn form_post(content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = content_type.unwrap_or("").as_bytes().to_vec();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// The inverse of [`form_post`]; an input without a newline is all body.
pub fn split_form_post(data: &[u8]) -> (Option<&str>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let content_type = std::str::from_utf8(&data[..i])
                .ok()
                .map(str::trim)
                .filter(|c| !c.is_empty());
            (content_type, &data[i + 1..])
        }
        None => (None, data),
    }
}

/// A PBX request: `<channel> <METHOD> <path>[?query]`, then `Name: value`
/// header lines, an empty line, and the body, like HTTP/1.1 on the wire.
/// `channel` picks one of the test channels (see
/// [`crate::telephony`]'s `Channel`).
pub fn pbx_request(
    channel: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{channel} {method} {path_and_query}\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// [`pbx_request`] read back. `None` when the request line is not three
/// words; header lines without a colon are skipped.
pub struct PbxRequest<'a> {
    pub channel: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

pub fn split_pbx_request(data: &[u8]) -> Option<PbxRequest<'_>> {
    let mut lines = LineCursor { data, pos: 0 };
    let request_line = std::str::from_utf8(lines.next_line()?).ok()?;
    let mut words = request_line.split(' ');
    let (channel, method, target) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = Vec::new();
    while let Some(line) = lines.next_line() {
        if line.is_empty() {
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            headers.push((&line[..colon], value));
        }
    }
    Some(PbxRequest {
        channel,
        method,
        path,
        query,
        headers,
        body: &data[lines.pos.min(data.len())..],
    })
}

struct LineCursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> LineCursor<'a> {
    fn next_line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        self.pos += end + 1;
        Some(&rest[..end])
    }
}

/// The files of a configuration folder, in this order, separated by NUL
/// bytes (which TOML text cannot hold): the main file, one channel file,
/// the team file, the routing file. A missing part is a missing file.
pub const CONFIG_FILES: &[&str] = &[
    "leadgate.toml",
    "channels.d/fuzz.toml",
    "team.toml",
    "routing.toml",
];

pub fn config_folder(files: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(file.unwrap_or(b"\x01"));
    }
    out
}

/// [`config_folder`] read back: one entry per name in [`CONFIG_FILES`]; a
/// part that is exactly `\x01` stands for a missing file.
pub fn split_config_folder(data: &[u8]) -> Vec<Option<&[u8]>> {
    let mut parts: Vec<Option<&[u8]>> = data
        .splitn(CONFIG_FILES.len(), |b| *b == 0)
        .map(|p| (p != b"\x01").then_some(p))
        .collect();
    parts.resize(CONFIG_FILES.len(), None);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_read_back() {
        let post = form_post(Some("application/json"), b"{\n}");
        assert_eq!(
            split_form_post(&post),
            (Some("application/json"), &b"{\n}"[..])
        );
        let req = pbx_request(
            "zadarma",
            "POST",
            "/?a=1",
            &[("Signature".into(), "x:y".into())],
            b"event=1\n",
        );
        let back = split_pbx_request(&req).unwrap();
        assert_eq!(
            (back.channel, back.method, back.path, back.query),
            ("zadarma", "POST", "/", Some("a=1"))
        );
        assert_eq!(back.headers, vec![(&b"Signature"[..], &b"x:y"[..])]);
        assert_eq!(back.body, b"event=1\n");
        let folder = config_folder(&[Some(b"a = 1"), None, Some(b""), None]);
        assert_eq!(
            split_config_folder(&folder),
            vec![Some(&b"a = 1"[..]), None, Some(&b""[..]), None]
        );
    }
}
