//! Issue 19, defect 12: a snapshot deleted early in a restore failed the restore with a
//! 500 and QEMU's raw error about a missing state file. Now the removal is refused
//! (409) while a restore reads the snapshot, and a restore that comes after the
//! removal is a plain 404; clones that started keep running after the removal.

mod common;

use std::sync::Arc;

use common::Daemon;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_removed_during_a_restore_is_refused_or_gone_never_a_500() {
    let d = Arc::new(Daemon::start(&[]).await);
    d.boot("src", json!({"memory_mib": 128})).await;
    let (mut refused, mut restored, mut gone) = (0, 0, 0);
    for round in 0..3 {
        let tag = format!("base{round}");
        d.expect(
            "POST",
            "/v1/vms/src/snapshot",
            Some(json!({ "tag": tag })),
            201,
        )
        .await;
        let restore = {
            let (d, tag) = (d.clone(), tag.clone());
            // `verify` hashes the RAM image while the restore holds the snapshot,
            // which widens the window the removal races into.
            let body = json!({"count": 2, "verify": true, "timeout_secs": 300});
            tokio::spawn(async move {
                d.call("POST", &format!("/v1/snapshots/{tag}/restore"), Some(body))
                    .await
            })
        };
        // Remove it at once, and again while the removal is refused.
        loop {
            let (status, answer) = d
                .call("DELETE", &format!("/v1/snapshots/{tag}"), None)
                .await;
            match status {
                200 => break,
                409 => {
                    let msg = answer["error"].as_str().unwrap();
                    assert!(msg.contains("is being restored"), "{msg}");
                    refused += 1;
                }
                _ => panic!("DELETE {tag} answered {status}: {answer}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (status, answer) = restore.await.unwrap();
        match status {
            201 => {
                restored += 1;
                for clone in answer.as_array().unwrap() {
                    let name = clone["name"].as_str().unwrap();
                    assert_eq!(d.sh(name, "echo up").await, "up\n", "{name}");
                    d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
                        .await;
                }
            }
            404 => {
                gone += 1;
                let msg = answer["error"].as_str().unwrap();
                assert_eq!(msg, format!("no snapshot tagged {tag}"));
            }
            _ => panic!(
                "the restore of {tag} answered {status}: {answer}\n{}",
                d.log()
            ),
        }
        assert_eq!(
            d.vm_names().await,
            ["src"],
            "nothing of a failed restore is left"
        );
    }
    println!("removals refused while restoring: {refused}; restores done: {restored}, found it gone: {gone}");
}
