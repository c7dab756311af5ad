//! Code generated from `bench/proto/etcd.proto` by tonic-prost-build: the
//! subset of etcd's v3 API the etcd workloads call, client side only.

#![allow(missing_docs, clippy::all)]

/// etcd's `etcdserverpb` package: `KV`, `Lease`, `Maintenance`.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
