//! One scenario call made generic, as ghz makes it: the method is looked up
//! in Prism's descriptor set, the JSON request data (after templating) is
//! turned into protobuf bytes with the protobuf JSON mapping, and the call
//! goes over a tonic channel with a codec that moves raw bytes.

use std::{str::FromStr, sync::Arc};

use bytes::{Buf, BufMut, Bytes};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{AsciiMetadataKey, AsciiMetadataValue},
    transport::Channel,
    Status,
};

use super::template::{CallContext, Template};

/// Protobuf bytes in, protobuf bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// Prism's services and messages, for calls named in scenario files.
pub fn descriptors() -> DescriptorPool {
    DescriptorPool::decode(prism_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into the binary decodes")
}

/// `pkg.Service/Method` or `pkg.Service.Method`.
pub fn find_method(pool: &DescriptorPool, call: &str) -> Result<MethodDescriptor, String> {
    let (service, method) = call
        .rsplit_once('/')
        .or_else(|| call.rsplit_once('.'))
        .ok_or_else(|| format!("call `{call}` is not `package.Service/Method`"))?;
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| format!("no service `{service}` in Prism's API"))?;
    let found = svc.methods().find(|m| m.name() == method);
    found.ok_or_else(|| format!("service `{service}` has no method `{method}`"))
}

/// JSON text (protobuf JSON mapping) to the message's bytes.
pub fn encode_json(desc: &prost_reflect::MessageDescriptor, json: &str) -> Result<Bytes, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc.clone(), &mut de)
        .map_err(|e| format!("request data does not fit {}: {e}", desc.full_name()))?;
    de.end().map_err(|e| e.to_string())?;
    Ok(msg.encode_to_vec().into())
}

/// How each request's bytes are made.
enum Requests {
    /// Rendered and encoded once per data item.
    Fixed(Vec<Bytes>),
    /// Rendered per call (request numbers, random keys).
    Templated(Vec<Template>),
}

/// Everything a worker needs to make the scenario's call.
pub struct Call {
    pub method: MethodDescriptor,
    pub path: http::uri::PathAndQuery,
    requests: Requests,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    session_token: String,
}

impl Call {
    /// Checks the call, the data and the metadata now, so a run never
    /// starts with requests that cannot be encoded.
    pub fn new(
        pool: &DescriptorPool,
        call: &str,
        data: &[serde_json::Value],
        metadata: &std::collections::BTreeMap<String, String>,
        session_token: &str,
    ) -> Result<Call, String> {
        let method = find_method(pool, call)?;
        if method.is_client_streaming() {
            return Err(format!(
                "`{call}` is client streaming; scenarios use unary and server-streaming calls"
            ));
        }
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let templates = data
            .iter()
            .map(|d| Template::parse(&d.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let fixed = templates.iter().all(Template::is_fixed);
        let mut metadata_out = Vec::new();
        for (k, v) in metadata {
            let v = Template::with_session_token(v, session_token);
            metadata_out.push((
                AsciiMetadataKey::from_str(k).map_err(|_| format!("bad metadata key `{k}`"))?,
                AsciiMetadataValue::from_str(&v)
                    .map_err(|_| format!("bad metadata value `{v}`"))?,
            ));
        }
        let mut call = Call {
            path: http::uri::PathAndQuery::from_str(&path).map_err(|e| e.to_string())?,
            requests: Requests::Templated(templates),
            metadata: metadata_out,
            session_token: session_token.to_string(),
            method,
        };
        // Encode request 0 now: bad data is an error before the run.
        let first = call.request(0, 0)?;
        if fixed {
            let Requests::Templated(templates) = &call.requests else {
                unreachable!()
            };
            let mut encoded = vec![first];
            for n in 1..templates.len() as u64 {
                encoded.push(call.request(n, 0)?);
            }
            call.requests = Requests::Fixed(encoded);
        }
        Ok(call)
    }

    /// Request number `n`'s bytes (data items round robin, as ghz does).
    pub fn request(&self, n: u64, worker_id: usize) -> Result<Bytes, String> {
        match &self.requests {
            Requests::Fixed(items) => Ok(items[(n % items.len() as u64) as usize].clone()),
            Requests::Templated(templates) => {
                let t = &templates[(n % templates.len() as u64) as usize];
                let json = t.render(&CallContext {
                    session_token: &self.session_token,
                    method: &self.method,
                    request_number: n,
                    worker_id,
                });
                encode_json(&self.method.input(), &json)
            }
        }
    }

    /// Makes the call; a server-streaming call is done when its stream
    /// ends. Returns the response messages.
    pub async fn invoke(
        &self,
        grpc: &mut tonic::client::Grpc<Channel>,
        body: Bytes,
    ) -> Result<Vec<Bytes>, Status> {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let mut request = tonic::Request::new(body);
        for (k, v) in &self.metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        if self.method.is_server_streaming() {
            let mut stream = grpc
                .server_streaming(request, self.path.clone(), BytesCodec)
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(m) = stream.message().await? {
                out.push(m);
            }
            Ok(out)
        } else {
            let reply = grpc.unary(request, self.path.clone(), BytesCodec).await?;
            Ok(vec![reply.into_inner()])
        }
    }
}

/// A response decoded for display and checks (the JSON mapping).
pub fn decode_to_json(
    desc: &prost_reflect::MessageDescriptor,
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(&msg).map_err(|e| e.to_string())
}

pub type SharedCall = Arc<Call>;
