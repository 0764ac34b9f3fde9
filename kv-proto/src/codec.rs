//! The gRPC codec of every kv service: prost, except that a message that fails to decode is
//! `INVALID_ARGUMENT` (kv.proto's "bad input") rather than prost's `INTERNAL`, which kv.proto
//! reserves for bugs in kv. Generated clients and servers name it through `codec_path`.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Longest decode error text repeated in a status message (the message travels in a header).
const MAX_DETAIL_CHARS: usize = 200;

/// prost encoding with decode failures reported as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct KvCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KvCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KvCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KvDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        KvDecoder(ProstDecoder::new(Default::default()))
    }
}

/// prost's decoder with its error mapped to `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct KvDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for KvDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            let detail: String = status.message().chars().take(MAX_DETAIL_CHARS).collect();
            Status::invalid_argument(format!(
                "malformed protobuf message ({detail}); send a message encoded from kv.proto"
            ))
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}
