//! A minimal HTTP/1.1 client over a plain TCP stream, enough for the CLI to call the `/dev/` API.

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Failures of a CLI request to the frontend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unsupported URL {url:?}: only http://host:port[/prefix] is supported")]
    UnsupportedUrl { url: String },
    #[error("connecting to {authority} failed: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("talking to {authority} failed: {source}")]
    Exchange {
        authority: String,
        source: std::io::Error,
    },
    #[error("malformed HTTP response from {authority}: {reason}")]
    MalformedResponse { authority: String, reason: String },
}

/// Status and body of an answered request.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request (`Connection: close`) to `base_url` + `path` and reads the whole answer.
///
/// # Errors
/// Non-`http` URLs, connection failures and unparseable responses.
pub async fn request(
    base_url: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, ClientError> {
    let rest = base_url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::UnsupportedUrl {
            url: base_url.to_owned(),
        })?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((authority, prefix)) => (authority, format!("/{}", prefix.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    if authority.is_empty() {
        return Err(ClientError::UnsupportedUrl {
            url: base_url.to_owned(),
        });
    }
    let prefix = prefix.trim_end_matches('/');
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(&address)
        .await
        .map_err(|source| ClientError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let exchange_error = |source| ClientError::Exchange {
        authority: authority.to_owned(),
        source,
    };
    stream.write_all(head.as_bytes()).await.map_err(exchange_error)?;
    stream.write_all(body).await.map_err(exchange_error)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(exchange_error)?;
    parse_response(&raw).map_err(|reason| ClientError::MalformedResponse {
        authority: authority.to_owned(),
        reason,
    })
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| "no end of headers".to_owned())?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let payload = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(payload)?
    } else {
        payload.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn decode_chunked(mut payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = payload
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "truncated chunk size".to_owned())?;
        let size_text = std::str::from_utf8(&payload[..line_end]).map_err(|_| "bad chunk size".to_owned())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        payload = &payload[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if payload.len() < size + 2 {
            return Err("truncated chunk".to_owned());
        }
        body.extend_from_slice(&payload[..size]);
        payload = &payload[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").map(|r| (r.status, r.body));
        assert_eq!(plain, Ok((200, b"ok".to_vec())));
        let chunked = parse_response(
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .map(|r| (r.status, r.body));
        assert_eq!(chunked, Ok((201, b"abcde".to_vec())));
        assert!(parse_response(b"garbage").is_err());
    }
}
