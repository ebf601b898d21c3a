//! mio's side of the machine's waits: [`Interest::to_mio`] and
//! `Ready::from(&mio::event::Event)`. (The machine itself knows no event loop.)

use crate::machine::{Interest, Ready};

impl Interest {
    /// The mio interest to wait for; `None` for [`Interest::Timer`] (use only the
    /// deadline as the poll timeout). An edge-triggered registration for
    /// `READABLE | WRITABLE` made once covers every stage, so re-registering on
    /// each change is optional.
    pub fn to_mio(self) -> Option<mio::Interest> {
        match self {
            Interest::Read => Some(mio::Interest::READABLE),
            Interest::Write => Some(mio::Interest::WRITABLE),
            Interest::Timer => None,
        }
    }
}

impl From<&mio::event::Event> for Ready {
    /// A hang-up or an error counts as both: the next OpenSSL call reports it.
    fn from(event: &mio::event::Event) -> Ready {
        let broken = event.is_error();
        let mut ready = Ready::NONE;
        if event.is_readable() || event.is_read_closed() || broken {
            ready = ready | Ready::READABLE;
        }
        if event.is_writable() || event.is_write_closed() || broken {
            ready = ready | Ready::WRITABLE;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests_map_to_mio() {
        assert_eq!(Interest::Read.to_mio(), Some(mio::Interest::READABLE));
        assert_eq!(Interest::Write.to_mio(), Some(mio::Interest::WRITABLE));
        assert_eq!(Interest::Timer.to_mio(), None);
    }
}
