//! The whole service for one test (or the benchmark), as root: the real executor on its
//! socket and the real API server as `nobody` in front of it, with a test PKI.

use std::path::PathBuf;
use std::process::Command;

use crate::api::{Api, ApiOptions};
use crate::executor::{Executor, ExecutorOptions};
use crate::pki::Pki;
use crate::scratch::Scratch;

/// Both daemons and what they were given. Dropped: the API server first, then the
/// executor (which stops its jobs), then the files.
pub struct Stack {
    pub api: Api,
    pub exec: Executor,
    pub pki: Pki,
    /// A directory for the test's own files (jobctl's home is `home` in it).
    pub scratch: Scratch,
}

impl Stack {
    /// Starts the executor with `exec`, then the API server with `api` in front of it
    /// (its `executor_socket` is set here), both with `pki`.
    pub fn start(tag: &str, pki: Pki, exec: ExecutorOptions, api: ApiOptions) -> Stack {
        let scratch = Scratch::new(tag);
        let exec = Executor::start(exec);
        let api = Api::spawn(
            &pki,
            &ApiOptions {
                executor_socket: exec.socket.clone(),
                ..api
            },
        );
        Stack {
            api,
            exec,
            pki,
            scratch,
        }
    }

    /// The service as a user installs it: a development PKI from `jobworker-dev-certs`,
    /// and the API server configured with command-line flags, on `127.0.0.1:0`.
    pub fn dev(tag: &str) -> Stack {
        Self::dev_with(tag, &[], "127.0.0.1:0")
    }

    /// [`Stack::dev`] with `executor_flags` given to the executor, and the API server
    /// listening on `listen`.
    pub fn dev_with(tag: &str, executor_flags: &[&str], listen: &str) -> Stack {
        let api = ApiOptions {
            listen: listen.into(),
            flags: true,
            ..Default::default()
        };
        let exec = ExecutorOptions::behind_api().flags(executor_flags);
        Self::start(tag, Pki::dev_certs(), exec, api)
    }

    /// The service with a PKI generated in process (the API server's tests); the server
    /// is configured by `api`.
    #[cfg(feature = "pki")]
    pub fn generated(tag: &str, api: ApiOptions) -> Stack {
        Self::start(tag, Pki::generate(), ExecutorOptions::behind_api(), api)
    }

    /// jobctl's home and configuration directory in this stack's scratch directory.
    pub fn home(&self) -> PathBuf {
        let home = self.scratch.join("home");
        std::fs::create_dir_all(&home).expect("jobctl's home");
        home
    }

    /// jobctl as `user`, talking to this stack's server with a clean environment.
    pub fn jobctl(&self, user: &str) -> Command {
        crate::jobctl::jobctl_as(&self.home(), &self.pki, user, &self.api.url())
    }

    /// A `[contexts.NAME]` table of jobctl's configuration file for this stack's server,
    /// as `user`.
    pub fn context_table(&self, name: &str, user: &str) -> String {
        let (cert, key) = self.pki.client(user);
        format!(
            "[contexts.{name:?}]\nserver = {:?}\nca = {:?}\ncert = {cert:?}\nkey = {key:?}\n",
            self.api.url(),
            self.pki.ca(),
        )
    }

    /// A gRPC client as `who`, on a connection of its own.
    #[cfg(feature = "grpc")]
    pub async fn client(
        &self,
        who: &str,
    ) -> jobworker_proto::v1::job_worker_client::JobWorkerClient<tonic::transport::Channel> {
        crate::grpc::job_client(self.api.addr, &self.pki, who).await
    }

    /// A gRPC client as `who` and a watch of the jobs service's health on the same
    /// connection, once the watch says the service is serving.
    #[cfg(feature = "grpc")]
    pub async fn client_and_health(
        &self,
        who: &str,
    ) -> (
        jobworker_proto::v1::job_worker_client::JobWorkerClient<tonic::transport::Channel>,
        tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    ) {
        use crate::grpc;
        let (channel, _) = grpc::channel(self.api.addr, self.pki.client_config(who))
            .await
            .expect("connecting to the API server");
        let mut watch = grpc::watch_health(channel.clone()).await;
        grpc::wait_for_status(
            &mut watch,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
        .await;
        let client = jobworker_proto::v1::job_worker_client::JobWorkerClient::new(channel);
        (client, watch)
    }

    /// Keeps every directory of the stack after the drop.
    pub fn keep(&self) {
        self.scratch.keep();
        self.pki.keep();
        self.api.dir.keep();
        self.exec.dir.keep();
    }
}
