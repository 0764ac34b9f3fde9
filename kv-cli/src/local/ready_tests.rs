use super::*;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A node's answer: it sees `alive` alive, the rest of n1..n3 down, and leads `leads`.
fn answer(alive: &[&str], leads: &[u32]) -> Result<pb::ClusterStatusResponse, String> {
    Ok(pb::ClusterStatusResponse {
        nodes: ["n1", "n2", "n3"]
            .iter()
            .map(|n| pb::NodeStatus {
                name: n.to_string(),
                state: if alive.contains(n) {
                    pb::NodeState::Alive as i32
                } else {
                    pb::NodeState::Down as i32
                },
                ..Default::default()
            })
            .collect(),
        leader_of: leads.to_vec(),
        ..Default::default()
    })
}

/// Two partitions, both replicated on n1, n2, n3.
fn replicas() -> Vec<Vec<String>> {
    vec![names(&["n1", "n2", "n3"]); 2]
}

#[test]
fn ready_when_all_answer_see_each_other_and_each_partition_has_one_leader() {
    let all = ["n1", "n2", "n3"];
    let answers = [answer(&all, &[0]), answer(&all, &[1]), answer(&all, &[])];
    assert_eq!(assess(&names(&all), &answers, &replicas()), vec![]);
}

#[test]
fn each_missing_condition_is_named() {
    let all = ["n1", "n2", "n3"];
    let answers = [
        answer(&all, &[0]),
        answer(&["n1", "n2"], &[0]),
        Err("connection refused".into()),
    ];
    let waiting = assess(&names(&all), &answers, &replicas());
    assert_eq!(
        waiting,
        vec![
            Waiting::NotSeen {
                node: "n2".into(),
                peer: "n3".into(),
                state: "down".into()
            },
            Waiting::NoAnswer {
                node: "n3".into(),
                error: "connection refused".into()
            },
            Waiting::ManyLeaders {
                partition: 0,
                nodes: names(&["n1", "n2"])
            },
            Waiting::NoLeader { partition: 1 },
        ]
    );
    assert_eq!(
        summary(&waiting),
        "n2 sees n3 as down; n3 does not answer (connection refused); \
         CP partition 0 has 2 leaders (n1, n2) (and 1 more)"
    );
}

#[test]
fn stopped_nodes_are_not_awaited_and_partitions_without_a_majority_need_no_leader() {
    // n2 and n3 stopped: only n1 runs, and no partition has a majority.
    let answers = [answer(&["n1"], &[])];
    assert_eq!(assess(&names(&["n1"]), &answers, &replicas()), vec![]);
    // n3 stopped: both partitions keep a majority and need a leader.
    let two = ["n1", "n2"];
    let answers = [answer(&two, &[0]), answer(&two, &[])];
    assert_eq!(
        assess(&names(&two), &answers, &replicas()),
        vec![Waiting::NoLeader { partition: 1 }]
    );
}

#[test]
fn majority_counts_running_replicas_of_each_partition() {
    let replicas = vec![names(&["n1", "n2", "n3"]), names(&["n2", "n3", "n4"])];
    assert_eq!(with_majority(&replicas, &names(&["n1", "n2"])), vec![0]);
    assert_eq!(with_majority(&replicas, &names(&["n2", "n3"])), vec![0, 1]);
    assert_eq!(
        with_majority(&replicas, &names(&["n1", "n4"])),
        Vec::<u32>::new()
    );
    // A one-node cluster: its single replica is a majority.
    assert_eq!(with_majority(&[names(&["n1"])], &names(&["n1"])), vec![0]);
}

#[test]
fn replicas_are_the_first_three_of_each_preference_list_by_name() {
    let ring = pb::RingResponse {
        partition_count: 2,
        members: (1..=4)
            .map(|id| pb::Member {
                id,
                name: format!("n{id}"),
                address: String::new(),
            })
            .collect(),
        partitions: vec![
            pb::Partition {
                id: 1,
                preference: vec![4, 3, 2, 1],
            },
            pb::Partition {
                id: 0,
                preference: vec![1, 2, 3, 4],
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        cp_replicas(&ring),
        vec![names(&["n1", "n2", "n3"]), names(&["n4", "n3", "n2"])]
    );
}

#[test]
fn there_is_a_probe_key_in_every_partition() {
    for q in [1, 2, 32, 256] {
        let keys = probe_keys(q);
        assert_eq!(keys.len(), q as usize);
        for (p, key) in keys.iter().enumerate() {
            let key = key.as_ref().expect("a key");
            assert_eq!(partition_for_key(key.as_bytes(), q) as usize, p);
        }
    }
}
