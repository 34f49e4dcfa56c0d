//! The local terminal for `run -it` and `exec -it`: raw mode for as long as a [`RawMode`]
//! lives (restored when it drops, on every way out, panics included), the window's size, and
//! the detach keys (ctrl-p ctrl-q), which leave the container running.

/// The terminal in raw mode; the old settings come back on drop.
pub struct RawMode {
    #[cfg(unix)]
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Raw mode on standard input, if it is a terminal.
    #[cfg(unix)]
    pub fn enter() -> anyhow::Result<Option<RawMode>> {
        use nix::sys::termios::{self, SetArg};
        use std::os::fd::AsFd;
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

    /// Raw mode on the console, if standard input is one (crossterm: the console modes
    /// without line input, echo and processed input).
    #[cfg(windows)]
    pub fn enter() -> anyhow::Result<Option<RawMode>> {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Ok(None);
        }
        crossterm::terminal::enable_raw_mode()?;
        Ok(Some(RawMode {}))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let _ =
                nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
        }
        #[cfg(windows)]
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The size of the terminal on standard output as (columns, rows), if it is one.
pub fn size() -> Option<(u16, u16)> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let mut ws = nix::pty::Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
        let rc = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
    }
    #[cfg(windows)]
    {
        if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return None;
        }
        crossterm::terminal::size().ok().filter(|&(cols, _)| cols > 0)
    }
}

/// Calls `changed` with the terminal's new size each time it changes, until the task is
/// dropped: on SIGWINCH on Unix; Windows has no such signal, so there it looks four times a
/// second (reading console input events for it would race the reader of standard input).
pub async fn watch_size<F: Future<Output = ()>>(mut changed: impl FnMut(u16, u16) -> F) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
        while winch.recv().await.is_some() {
            if let Some((c, r)) = size() {
                changed(c, r).await;
            }
        }
    }
    #[cfg(windows)]
    {
        let mut last = size();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let now = size();
            if now != last
                && let Some((c, r)) = now
            {
                changed(c, r).await;
            }
            last = now;
        }
    }
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
