//! [`ChannelPool`]: one lazily connected channel per node address, dialled
//! with one [`Dialer`], for the calls a node makes to other nodes besides
//! Raft (forwarded calls to the leader, probes of a node that joins).

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::transport::Channel;

use super::Dialer;
use crate::error::Error;

/// Channels by address, made on first use and kept.
#[derive(Debug, Default)]
pub struct ChannelPool {
    dialer: Dialer,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelPool {
    /// A pool that dials with `dialer`.
    pub fn new(dialer: Dialer) -> Self {
        ChannelPool { dialer, channels: Mutex::new(HashMap::new()) }
    }

    /// How this pool dials (TLS, token): calls sent on its channels need the
    /// token too ([`Dialer::authorize`]).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// A (lazily connected) channel to `address`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the address is not usable.
    pub fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .dialer
            .channel(address)
            .map_err(|e| Error::unavailable(format!("node address {address:?} is not usable: {e}")))?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}
