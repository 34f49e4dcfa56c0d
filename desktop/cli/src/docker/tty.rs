//! The local terminal for `run -it` and `exec -it`: raw mode for as long as a [`RawMode`]
//! lives (restored when it drops, on every way out, panics included), the window's size, and
//! the detach keys (ctrl-p ctrl-q), which leave the container running.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// The terminal in raw mode; the old settings come back on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on standard input, if it is a terminal.
    pub fn enter() -> anyhow::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal on `fd` as (columns, rows), if it is one.
pub fn size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = nix::pty::Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Watches typed bytes for the detach sequence, ctrl-p then ctrl-q (docker's default). A
/// ctrl-p is held back until the next byte shows whether it starts the sequence.
#[derive(Default)]
pub struct DetachKeys {
    held: bool,
}

const CTRL_P: u8 = 0x10;
const CTRL_Q: u8 = 0x11;

impl DetachKeys {
    /// The bytes to send on from `input`, and whether the sequence was typed (nothing after
    /// it is sent).
    pub fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 1);
        for &b in input {
            if self.held {
                self.held = false;
                if b == CTRL_Q {
                    return (out, true);
                }
                out.push(CTRL_P);
            }
            if b == CTRL_P {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detach_sequence_is_caught_across_reads() {
        let mut d = DetachKeys::default();
        assert_eq!(d.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(d.filter(&[b'a', CTRL_P]), (b"a".to_vec(), false));
        assert_eq!(d.filter(&[CTRL_Q, b'x']), (Vec::new(), true));
        let mut d = DetachKeys::default();
        assert_eq!(d.filter(&[CTRL_P, b'b']), (vec![CTRL_P, b'b'], false));
        assert_eq!(d.filter(&[CTRL_P, CTRL_P, CTRL_Q]), (vec![CTRL_P], true));
    }
}
