//! The codec of our services (set in `build.rs`): prost, with an encode buffer sized for our
//! messages. tonic's default gives every response stream an 8 KiB buffer for its whole life,
//! and writes each message at the offset where the previous one ended, so over hours of
//! heartbeats an idle `WatchOnboarding` stream ends up touching all of it: 10,000 streams
//! would hold 80 MiB for messages of a few hundred bytes. Our usual message fits in
//! [`ENCODE_BUFFER`]; a larger one (a long list page) grows the buffer as it is written.

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode buffer per response (tonic's default: 8 KiB).
pub const ENCODE_BUFFER: usize = 1024;
/// Bytes encoded before a stream hands them to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with a smaller encode buffer.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Codec as _, Encoder as _};

    use super::*;
    use crate::grpc::pb;

    #[test]
    fn responses_start_with_the_small_buffer() {
        let mut codec = Codec::<pb::Onboarding, pb::GetOnboardingRequest>::default();
        // Only its Debug form shows the fields.
        let settings = format!("{:?}", codec.encoder().buffer_settings());
        assert_eq!(settings, format!("{:?}", BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)));
        assert_ne!(settings, format!("{:?}", BufferSettings::default()), "not tonic's default");
    }
}
