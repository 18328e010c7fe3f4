//! The wire contract: code generated from `proto/prism/**/*.proto` (seed
//! 002's packages, messages and field numbers), one module per package.
//! Its own crate so the gateway and the load runner share it, and a client
//! needs only this.

#![allow(clippy::all, missing_docs)]

/// Encoded descriptors of every Prism package, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prism_descriptor");

pub mod config {
    pub mod v1 {
        tonic::include_proto!("prism.config.v1");
    }
}
pub mod session {
    pub mod v1 {
        tonic::include_proto!("prism.session.v1");
    }
}
pub mod keyvalue {
    pub mod v1 {
        tonic::include_proto!("prism.keyvalue.v1");
    }
}
pub mod queue {
    pub mod v1 {
        tonic::include_proto!("prism.queue.v1");
    }
}
pub mod pubsub {
    pub mod v1 {
        tonic::include_proto!("prism.pubsub.v1");
    }
}
pub mod reader {
    pub mod v1 {
        tonic::include_proto!("prism.reader.v1");
    }
}
pub mod transact {
    pub mod v1 {
        tonic::include_proto!("prism.transact.v1");
    }
}
pub mod cache {
    pub mod v1 {
        tonic::include_proto!("prism.cache.v1");
    }
}
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("prism.admin.v1");
    }
}
