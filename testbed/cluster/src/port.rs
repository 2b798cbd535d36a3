//! Free loopback ports for the cluster's listeners.

use std::net::TcpListener;

use crate::error::{Error, Result};

/// Reserves `count` distinct free ports on 127.0.0.1.
///
/// All listeners are held until every port is known, so the ports differ from each other; they are
/// released before returning, so another process may still take one before the component binds it
/// (startup retries once on that).
pub(crate) fn reserve<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(Error::ReservePort)?;
        *port = listener.local_addr().map_err(Error::ReservePort)?.port();
        listeners.push(listener);
    }
    Ok(ports)
}
