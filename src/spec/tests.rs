use super::*;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, MountBuilder,
    PosixRlimitBuilder, ProcessBuilder, RootBuilder, SpecBuilder, UserBuilder,
};

fn ns(t: LinuxNamespaceType, path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
    let b = LinuxNamespaceBuilder::default().typ(t);
    match path {
        Some(p) => b.path(p).build().unwrap(),
        None => b.build().unwrap(),
    }
}

/// A spec as `ctr run` makes it: its own namespaces, no mounts.
fn spec_with(namespaces: Vec<oci_spec::runtime::LinuxNamespace>) -> SpecBuilder {
    SpecBuilder::default()
        .root(RootBuilder::default().path("rootfs").build().unwrap())
        .process(
            ProcessBuilder::default()
                .args(vec!["/app.wasm".to_string(), "x".to_string()])
                .env(vec!["A=1".to_string()])
                .cwd("/work")
                .build()
                .unwrap(),
        )
        .linux(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .cgroups_path(PathBuf::from("/ns/c1"))
                .build()
                .unwrap(),
        )
}

fn own_namespaces() -> Vec<oci_spec::runtime::LinuxNamespace> {
    [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ]
    .into_iter()
    .map(|t| ns(t, None))
    .collect()
}

fn translate(spec: Spec) -> Result<ContainerSpec, SpecError> {
    container(&spec, cgroups_path(&spec)?, HostSecurity::default())
}

#[test]
fn a_plain_container_gets_its_own_namespaces_its_argv_env_cwd_and_cgroup() {
    let cs = translate(spec_with(own_namespaces()).build().unwrap()).unwrap();
    assert_eq!(cs.module, "/app.wasm");
    assert_eq!(cs.plan.args, vec!["/app.wasm", "x"]);
    assert_eq!(cs.plan.env, vec!["A=1"]);
    assert_eq!(cs.plan.cwd, "/work");
    assert_eq!(cs.plan.cgroup.as_deref(), Some("/ns/c1"));
    assert_eq!(cs.pid, Ns::New);
    let kinds: Vec<_> = cs
        .plan
        .namespaces
        .iter()
        .map(|n| (n.kind, n.action))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (NamespaceKind::Mount, NamespaceAction::New),
            (NamespaceKind::Network, NamespaceAction::New),
            (NamespaceKind::Ipc, NamespaceAction::New),
            (NamespaceKind::Uts, NamespaceAction::New),
        ]
    );
    assert!(cs.joins.is_empty());
}

#[test]
fn joined_namespaces_keep_their_paths_in_plan_order() {
    let mut namespaces = own_namespaces();
    namespaces.retain(|n| {
        !matches!(
            n.typ(),
            LinuxNamespaceType::Network | LinuxNamespaceType::Uts
        )
    });
    namespaces.push(ns(LinuxNamespaceType::Network, Some("/proc/42/ns/net")));
    namespaces.push(ns(LinuxNamespaceType::Uts, Some("/proc/42/ns/uts")));
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    namespaces.push(ns(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid")));
    let cs = translate(spec_with(namespaces).build().unwrap()).unwrap();
    assert_eq!(
        cs.joins,
        vec![
            PathBuf::from("/proc/42/ns/net"),
            PathBuf::from("/proc/42/ns/uts")
        ]
    );
    assert_eq!(cs.pid, Ns::Join(PathBuf::from("/proc/42/ns/pid")));
}

#[test]
fn what_cannot_be_honoured_is_refused_naming_the_field() {
    let mut namespaces = own_namespaces();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Mount);
    let e = translate(spec_with(namespaces).build().unwrap()).unwrap_err();
    assert!(e.to_string().contains("mount namespace"), "{e}");

    let mut namespaces = own_namespaces();
    namespaces.push(ns(LinuxNamespaceType::Time, None));
    let e = translate(spec_with(namespaces).build().unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("linux.namespaces: a time namespace"),
        "{e}"
    );

    let mut namespaces = own_namespaces();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Uts);
    let e = translate(spec_with(namespaces).hostname("h").build().unwrap()).unwrap_err();
    assert!(e.to_string().starts_with("hostname:"), "{e}");

    let mut s = spec_with(own_namespaces()).build().unwrap();
    let mut p = s.process().clone().unwrap();
    p.set_terminal(Some(true));
    s.set_process(Some(p));
    assert!(translate(s)
        .unwrap_err()
        .to_string()
        .starts_with("process.terminal"));

    // Hooks the runtime runs in the container's view are refused; those it runs in its own
    // make the process wait for them after its namespaces.
    let hook = |p: &str| {
        oci_spec::runtime::HookBuilder::default()
            .path(p)
            .build()
            .unwrap()
    };
    let s = spec_with(own_namespaces())
        .hooks(
            oci_spec::runtime::HooksBuilder::default()
                .start_container(vec![hook("/bin/true")])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(translate(s)
        .unwrap_err()
        .to_string()
        .starts_with("hooks.startContainer"));
    let s = spec_with(own_namespaces())
        .hooks(
            oci_spec::runtime::HooksBuilder::default()
                .create_runtime(vec![hook("/bin/true")])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(translate(s).unwrap().plan.hooks);
    let s = spec_with(own_namespaces()).build().unwrap();
    assert!(!translate(s).unwrap().plan.hooks);
}

#[test]
fn only_sysctls_of_the_containers_own_namespaces_may_be_set() {
    let with = |namespaces, key: &str| {
        let mut s = spec_with(namespaces).build().unwrap();
        let mut l = s.linux().clone().unwrap();
        l.set_sysctl(Some([(key.to_string(), "1".to_string())].into()));
        s.set_linux(Some(l));
        translate(s)
    };
    assert!(with(own_namespaces(), "net.ipv4.ip_forward").is_ok());
    assert!(with(own_namespaces(), "kernel.shmmax").is_ok());
    let host_net: Vec<_> = own_namespaces()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    let e = with(host_net, "net.ipv4.ip_forward").unwrap_err();
    assert!(e.to_string().contains("would change the host"), "{e}");
    let e = with(own_namespaces(), "vm.swappiness").unwrap_err();
    assert!(e.to_string().contains("would change the host"), "{e}");
    let e = with(own_namespaces(), "net/../../x").unwrap_err();
    assert!(e.to_string().contains("not a sysctl name"), "{e}");
}

fn mount_of(dst: &str, typ: &str, src: &str, opts: &[&str]) -> OciMount {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

#[test]
fn mount_options_become_attributes_propagation_and_data() {
    let m = mount(&mount_of(
        "/data:/x",
        "bind",
        "/srv/data",
        &["rbind", "ro", "nosuid", "rprivate"],
    ))
    .unwrap();
    assert_eq!(
        m.destination, "/data:/x",
        "a destination is a container path, kept whole"
    );
    assert_eq!(
        m.source,
        MountSource::Bind {
            source: "/srv/data".into(),
            recursive: true
        }
    );
    assert_eq!(m.attributes, mount_attr::RDONLY | mount_attr::NOSUID);
    assert!(!m.recursive_attributes);
    assert_eq!(
        m.propagation,
        Some(Propagation {
            kind: PropagationKind::Private,
            recursive: true
        })
    );

    let m = mount(&mount_of(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ))
    .unwrap();
    assert_eq!(
        m.source,
        MountSource::Fresh {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            data: vec!["mode=755".into(), "size=65536k".into()]
        }
    );
    assert_eq!(
        (m.attributes, m.atime),
        (mount_attr::NOSUID, Some(mount_attr::STRICTATIME))
    );

    let m = mount(&mount_of("/ro", "bind", "/srv", &["rbind", "rro"])).unwrap();
    assert!(m.recursive_attributes);
    assert_eq!(m.attributes, mount_attr::RDONLY);

    assert_eq!(
        mount(&mount_of("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"]))
            .unwrap()
            .source,
        MountSource::Cgroup
    );
    let e = mount(&mount_of("/x", "bind", "/srv", &["rbind", "size=1"])).unwrap_err();
    assert!(
        e.to_string().contains("mean nothing to a bind mount"),
        "{e}"
    );
    let e = mount(&mount_of("relative", "tmpfs", "tmpfs", &[])).unwrap_err();
    assert!(e.to_string().contains("not absolute"), "{e}");
    let e = mount(&mount_of("/x", "tmpfs", "tmpfs", &["sync"])).unwrap_err();
    assert!(e.to_string().contains("\"sync\" is not supported"), "{e}");
}

#[test]
fn a_fresh_dev_gets_the_default_device_nodes_and_the_specs() {
    let s = spec_with(own_namespaces())
        .mounts(vec![mount_of("/dev", "tmpfs", "tmpfs", &["mode=755"])])
        .build()
        .unwrap();
    let cs = translate(s).unwrap();
    let names: Vec<_> = cs.plan.devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty"
        ]
    );
    assert!(cs
        .plan
        .devices
        .iter()
        .all(|d| d.kind == 'c' && d.mode == 0o666));
    // Without a fresh /dev, none are made.
    let cs = translate(spec_with(own_namespaces()).mounts(vec![]).build().unwrap()).unwrap();
    assert!(cs.plan.devices.is_empty());
}

#[test]
fn user_capabilities_and_rlimits_are_translated_to_the_kernels_numbers() {
    let caps = [
        Capability::Chown,
        Capability::NetBindService,
        Capability::Kill,
    ]
    .into_iter()
    .collect::<oci_spec::runtime::Capabilities>();
    let mut s = spec_with(own_namespaces()).build().unwrap();
    let mut p = s.process().clone().unwrap();
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1001u32)
            .additional_gids(vec![5u32, 6])
            .umask(0o027u32)
            .build()
            .unwrap(),
    );
    p.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .unwrap(),
    ));
    p.set_rlimits(Some(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(1024u64)
        .hard(2048u64)
        .build()
        .unwrap()]));
    p.set_no_new_privileges(Some(true));
    p.set_oom_score_adj(Some(500));
    s.set_process(Some(p));
    let plan = translate(s).unwrap().plan;
    assert_eq!(
        plan.user,
        User {
            uid: 1000,
            gid: 1001,
            additional_gids: vec![5, 6],
            umask: Some(0o027)
        }
    );
    let bits = (1 << 0) | (1 << 10) | (1 << 5); // CAP_CHOWN, CAP_NET_BIND_SERVICE, CAP_KILL
    assert_eq!(plan.capabilities.bounding, bits);
    assert_eq!(plan.capabilities.effective, bits);
    assert_eq!(
        (plan.capabilities.inheritable, plan.capabilities.ambient),
        (0, 0)
    );
    assert_eq!(
        plan.rlimits,
        vec![Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: 1024,
            hard: 2048
        }]
    );
    assert!(plan.no_new_privileges);
    assert_eq!(plan.oom_score_adj, Some(500));
}

#[test]
fn an_apparmor_profile_is_kept_only_where_the_kernel_runs_apparmor() {
    let mut s = spec_with(own_namespaces()).build().unwrap();
    let mut p = s.process().clone().unwrap();
    p.set_apparmor_profile(Some("cri-containerd.apparmor.d".into()));
    s.set_process(Some(p));
    assert_eq!(translate(s.clone()).unwrap().plan.apparmor_profile, None);
    let on = HostSecurity {
        apparmor: true,
        selinux: false,
    };
    assert_eq!(
        container(&s, cgroups_path(&s).unwrap(), on)
            .unwrap()
            .plan
            .apparmor_profile
            .as_deref(),
        Some("cri-containerd.apparmor.d")
    );
}

#[test]
fn a_pod_sandbox_asks_for_the_namespaces_it_holds() {
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid, None),
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
        ns(LinuxNamespaceType::Mount, None),
        ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1")),
    ];
    let mut s = spec_with(namespaces).hostname("pod-a").build().unwrap();
    let mut l = s.linux().clone().unwrap();
    l.set_sysctl(Some(
        [("net.ipv4.ping_group_range".to_string(), "0 1".to_string())].into(),
    ));
    s.set_linux(Some(l));
    let sb = sandbox(&s).unwrap();
    assert_eq!(sb.network, Ns::Join("/var/run/netns/cni-1".into()));
    assert_eq!(
        (sb.ipc.clone(), sb.uts.clone(), sb.pid.clone()),
        (Ns::New, Ns::New, Ns::New)
    );
    assert_eq!(sb.hostname.as_deref(), Some("pod-a"));
    assert_eq!(sb.sysctl.len(), 1);
    // Host network: no namespace to hold, and no net.* sysctl may be set.
    let host = spec_with(vec![
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
    ])
    .build()
    .unwrap();
    assert_eq!(sandbox(&host).unwrap().network, Ns::Host);
    // `hostUsers: false`: the pod's user namespace would have to be held like its network's.
    let userns = spec_with(vec![
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
        ns(LinuxNamespaceType::User, None),
    ])
    .build()
    .unwrap();
    let e = sandbox(&userns).unwrap_err().to_string();
    assert!(
        e.contains("a pod sandbox's user namespace is not supported"),
        "{e}"
    );
}

fn id_map(container_id: u32, host_id: u32, size: u32) -> oci_spec::runtime::LinuxIdMapping {
    oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(container_id)
        .host_id(host_id)
        .size(size)
        .build()
        .unwrap()
}

/// A container with a user namespace of its own (or `path`'s), `maps` as both its uid and
/// gid mappings, and `uid` as its user.
fn with_user_namespace(
    path: Option<&str>,
    maps: Vec<oci_spec::runtime::LinuxIdMapping>,
    uid: u32,
) -> Spec {
    let mut namespaces = own_namespaces();
    namespaces.push(ns(LinuxNamespaceType::User, path));
    let mut s = spec_with(namespaces).build().unwrap();
    let mut linux = s.linux().clone().unwrap();
    if !maps.is_empty() {
        linux.set_uid_mappings(Some(maps.clone()));
        linux.set_gid_mappings(Some(maps));
    }
    s.set_linux(Some(linux));
    let mut p = s.process().clone().unwrap();
    p.set_user(UserBuilder::default().uid(uid).gid(0u32).build().unwrap());
    s.set_process(Some(p));
    s
}

#[test]
fn a_new_user_namespace_comes_last_with_the_maps_the_shim_writes() {
    let maps = vec![id_map(0, 100000, 65536), id_map(65536, 300000, 1)];
    let cs = translate(with_user_namespace(None, maps, 1000)).unwrap();
    let last = cs.plan.namespaces.last().unwrap();
    assert_eq!(
        (last.kind, last.action),
        (NamespaceKind::User, NamespaceAction::New)
    );
    let m = cs.id_maps.unwrap();
    assert_eq!(IdMaps::map_file(&m.uid), "0 100000 65536\n65536 300000 1\n");
    assert_eq!(m.uid, m.gid);

    // Joined by path: a join like the others, last, with no maps of ours.
    let cs = translate(with_user_namespace(Some("/proc/42/ns/user"), vec![], 0)).unwrap();
    let last = cs.plan.namespaces.last().unwrap();
    assert_eq!(
        (last.kind, last.action),
        (NamespaceKind::User, NamespaceAction::Join)
    );
    assert_eq!(cs.joins.last().unwrap(), Path::new("/proc/42/ns/user"));
    assert!(cs.id_maps.is_none());
}

#[test]
fn user_namespace_mappings_that_cannot_work_are_refused_naming_the_field() {
    let err = |s: Spec| translate(s).unwrap_err().to_string();
    let e = err(with_user_namespace(None, vec![], 0));
    assert!(
        e.starts_with("linux.uidMappings: a new user namespace needs"),
        "{e}"
    );
    let e = err(with_user_namespace(
        None,
        vec![id_map(0, 100000, 1000)],
        1000,
    ));
    assert_eq!(
        e,
        "process.user.uid: 1000 is not mapped by linux.uidMappings"
    );
    let e = err(with_user_namespace(None, vec![id_map(0, u32::MAX, 2)], 0));
    assert!(e.contains("runs past the largest id"), "{e}");
    let e = err(with_user_namespace(None, vec![id_map(5, 5, 1); 341], 5));
    assert!(e.contains("more than the kernel's 340"), "{e}");
    let e = err(with_user_namespace(
        Some("/proc/42/ns/user"),
        vec![id_map(0, 100000, 65536)],
        0,
    ));
    assert!(
        e.starts_with("linux.uidMappings: mappings for the user namespace"),
        "{e}"
    );

    // Mappings without a user namespace would silently mean nothing.
    let mut s = spec_with(own_namespaces()).build().unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_uid_mappings(Some(vec![id_map(0, 100000, 65536)]));
    s.set_linux(Some(linux));
    assert!(err(s).starts_with("linux.uidMappings: mappings without a user namespace"));
}

#[test]
fn a_cgroup_path_names_its_driver_and_one_that_climbs_is_refused() {
    let with_path = |path: &str| {
        let mut spec = spec_with(own_namespaces()).build().unwrap();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_cgroups_path(Some(PathBuf::from(path)));
        spec.set_linux(Some(linux));
        spec
    };
    let systemd = with_path("kubepods-besteffort-pod1.slice:cri-containerd:c1");
    match cgroups_path(&systemd).unwrap() {
        Some(CgroupPath::Systemd(s)) => assert_eq!(s.unit, "cri-containerd-c1.scope"),
        other => panic!("{other:?}"),
    }
    // The scope is systemd's to make: the process is in it before it reads its plan.
    let cs = translate(systemd).unwrap();
    assert!(cs.plan.cgroup.is_none() && cs.cgroup.is_some_and(|c| c.is_systemd()));
    assert!(matches!(
        cgroups_path(&with_path(":cri-containerd:c1")).unwrap(),
        Some(CgroupPath::Systemd(_))
    ));
    let e = cgroups_path(&with_path("pod1.slice:cri:../../x")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("linux.cgroupsPath: \"pod1.slice:cri:../../x\": the name"),
        "{e}"
    );
    for climbing in ["/../../..", "/kubepods/../../x", "./c1"] {
        let e = cgroups_path(&with_path(climbing)).unwrap_err();
        assert!(
            e.to_string().contains("climbs out of the cgroup hierarchy"),
            "{e}"
        );
    }
    assert_eq!(
        cgroups_path(&with_path("/kubepods/besteffort/pod1/c1")).unwrap(),
        Some(CgroupPath::Fs("/kubepods/besteffort/pod1/c1".into()))
    );
}

#[test]
fn device_rules_become_the_cgroups_policy_and_an_update_may_not_change_it() {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder};
    let deny_all = || -> LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()
    };
    let with_rules = |rules: Vec<LinuxDeviceCgroup>, path: Option<&str>| {
        let mut spec = spec_with(own_namespaces()).build().unwrap();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_cgroups_path(path.map(PathBuf::from));
        linux.set_resources(Some(
            LinuxResourcesBuilder::default()
                .devices(rules)
                .build()
                .unwrap(),
        ));
        spec.set_linux(Some(linux));
        spec
    };
    let cs = translate(with_rules(vec![deny_all()], Some("/ns/c1"))).unwrap();
    let cri = crate::cgroup::devices::Policy::of_spec(&[deny_all()], &[]).unwrap();
    assert_eq!(cs.devices.policy, cri);
    assert!(cs.devices.check_update(&[deny_all()]).is_ok(), "a resize");
    let all = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build()
        .unwrap();
    let e = cs
        .devices
        .check_update(std::slice::from_ref(&all))
        .unwrap_err();
    assert!(
        e.to_string().starts_with("linux.resources.devices: "),
        "{e}"
    );

    // A bad rule fails the create naming it.
    let bad = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwx")
        .build()
        .unwrap();
    let e = translate(with_rules(vec![deny_all(), bad], Some("/ns/c1"))).unwrap_err();
    assert!(
        e.to_string().starts_with("linux.resources.devices[1]: "),
        "{e}"
    );
    // No cgroup, no device filter: refused, unless the spec allows every device.
    let e = translate(with_rules(vec![deny_all()], None)).unwrap_err();
    assert!(e.to_string().starts_with("linux.cgroupsPath: "), "{e}");
    assert!(translate(with_rules(vec![all], None)).is_ok());
}
