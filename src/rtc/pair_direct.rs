//! The direct path (`direct`) through the in-memory `Pair`: a real str0m
//! client decrypts what the viewer writes with roomcast's own SRTP.

#[cfg(test)]
mod tests {}
