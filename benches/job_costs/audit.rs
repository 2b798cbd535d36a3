//! Counts the API server's requests from its audit log (one JSON line per request received),
//! by user agent, verb and resource, between two points of a run.

use std::{collections::BTreeMap, io::BufRead, path::PathBuf};

/// Requests of one client, by `"<verb> <resource>[/<subresource>]"`.
pub type Counts = BTreeMap<String, u64>;

/// Reads the audit log from where the last read stopped.
pub struct AuditLog {
    path: PathBuf,
    offset: u64,
}

impl AuditLog {
    /// Starts at the current end of the log: earlier requests are not counted.
    pub fn from_now(path: PathBuf) -> AuditLog {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        AuditLog { path, offset }
    }

    /// Requests received since the last call whose user agent starts with `agent`.
    pub fn take(&mut self, agent: &str) -> Counts {
        let file = std::fs::File::open(&self.path).expect("the API server's audit log");
        let mut reader = std::io::BufReader::new(file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(self.offset)).expect("seek the audit log");
        let mut counts = Counts::new();
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).expect("read the audit log");
            // A line still being written is read again next time.
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += read as u64;
            if let Some(key) = request_key(&line, agent) {
                *counts.entry(key).or_default() += 1;
            }
        }
        counts
    }
}

fn request_key(line: &str, agent: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if !event["userAgent"].as_str()?.starts_with(agent) {
        return None;
    }
    let verb = event["verb"].as_str()?;
    let object = &event["objectRef"];
    let resource = object["resource"].as_str().unwrap_or("(none)");
    Some(match object["subresource"].as_str() {
        Some(sub) => format!("{verb} {resource}/{sub}"),
        None => format!("{verb} {resource}"),
    })
}

/// Sums `counts` into the classes the targets speak of.
pub struct Classes {
    /// Object calls: create, get, patch, update, delete.
    pub object_calls: u64,
    pub log_streams: u64,
    pub watches: u64,
    pub lists: u64,
}

pub fn classify(counts: &Counts) -> Classes {
    let mut classes = Classes {
        object_calls: 0,
        log_streams: 0,
        watches: 0,
        lists: 0,
    };
    for (key, n) in counts {
        let verb = key.split(' ').next().unwrap_or_default();
        match verb {
            _ if key.ends_with("pods/log") => classes.log_streams += n,
            "watch" => classes.watches += n,
            "list" => classes.lists += n,
            _ => classes.object_calls += n,
        }
    }
    classes
}
