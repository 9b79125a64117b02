# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_sdht_global_optspecs
    string join \n token-file= h/help V/version
end

function __fish_sdht_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_sdht_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_sdht_using_subcommand
    set -l cmd (__fish_sdht_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c sdht -n "__fish_sdht_needs_command" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_needs_command" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_needs_command" -s V -l version -d 'Print version'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "serve" -d 'Run a node: start a new ring, or join one with --bootstrap'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "put" -d 'Store VALUE under KEY ("-" reads the value from stdin)'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "get" -d 'Print the value of KEY (exit status 1 when absent)'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "delete" -d 'Delete KEY (exit status 1 when absent)'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "ring" -d 'Show the ring clockwise from NODE: address, id and key count of each node'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "leave" -d 'Ask NODE to hand its keys to its successor and leave the ring'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "demo" -d 'Start a local ring of 4 nodes on 127.0.0.1:8000-8003, show it working, serve until Ctrl-C'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "completions" -d 'Print shell completions for SHELL to stdout (the Debian package installs them)'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "man" -d 'Write the man pages (sdht.1 and one per subcommand) into DIR'
complete -c sdht -n "__fish_sdht_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l listen -d 'Address to listen on (port 0 picks a free port)' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l data -d 'Directory of this node\'s LMDB store' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l bootstrap -d 'A node of the ring to join; without it the node starts a new ring of one' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l advertise -d 'Address peers and clients use for this node (default: the listening address)' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l stabilize-ms -d 'Period of the stabilize rounds that repair successor and predecessor pointers' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l peer-timeout-ms -d 'How long to wait for a peer\'s answer to a control message' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l max-value-bytes -d 'Largest value accepted, in bytes' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l hop-limit -d 'Forwards after which a request is refused with 508 (a routing loop)' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l successors -d 'Length of the successor list, for repair after crashes' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l replicas -d 'Copies of each key: the owner and its next R-1 successors (at most --successors)' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l cluster-key-file -d 'Shared secret of the ring, at least 32 bytes (or env SDHT_CLUSTER_KEY): node-to-node calls are signed with it and unsigned ones refused' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l client-token-file -d 'Require `Authorization: Bearer TOKEN` (the file\'s content) on /kv and /leave. Needs a cluster key: without one, node-to-node calls would bypass the token' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l max-conns-per-client -d 'Most client connections from one IP address; node-to-node calls do not count' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l max-inflight-bytes -d 'Most request-body bytes received or held at once; an upload that does not fit waits briefly, then gets 503' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l handoff-batch-keys -d 'Most keys in one handoff batch (smaller batches: more, shorter requests)' -r
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l private-status -d 'With a client token, require it on /status and /ring too'
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l insecure -d 'Allow a node without a cluster key to listen on a non-loopback address'
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l id-from-address -d 'Take the hash of the advertised address as the node\'s id (deterministic, checked by peers) instead of a balanced id chosen at the first join and kept in --data. Every node of a ring must use the same kind of id'
complete -c sdht -n "__fish_sdht_using_subcommand serve" -l balanced-id -d 'A balanced id (the default; spelled out for scripts that want to say so)'
complete -c sdht -n "__fish_sdht_using_subcommand serve" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand put" -l node -d 'A node of the ring (repeat for more: the next is tried if one is down)' -r
complete -c sdht -n "__fish_sdht_using_subcommand put" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand put" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand get" -l node -d 'A node of the ring (repeat for more: the next is tried if one is down)' -r
complete -c sdht -n "__fish_sdht_using_subcommand get" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand get" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand delete" -l node -d 'A node of the ring (repeat for more: the next is tried if one is down)' -r
complete -c sdht -n "__fish_sdht_using_subcommand delete" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand delete" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand ring" -l node -r
complete -c sdht -n "__fish_sdht_using_subcommand ring" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand ring" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand leave" -l node -r
complete -c sdht -n "__fish_sdht_using_subcommand leave" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand leave" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand demo" -l data -d 'Where the nodes keep their data (default: a temporary directory, removed at exit)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand demo" -l base-port -d 'Port of the first node; the others follow' -r
complete -c sdht -n "__fish_sdht_using_subcommand demo" -l nodes -d 'Number of nodes' -r
complete -c sdht -n "__fish_sdht_using_subcommand demo" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand demo" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand completions" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand completions" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand man" -l token-file -d 'Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN)' -r -F
complete -c sdht -n "__fish_sdht_using_subcommand man" -s h -l help -d 'Print help'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "serve" -d 'Run a node: start a new ring, or join one with --bootstrap'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "put" -d 'Store VALUE under KEY ("-" reads the value from stdin)'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "get" -d 'Print the value of KEY (exit status 1 when absent)'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "delete" -d 'Delete KEY (exit status 1 when absent)'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "ring" -d 'Show the ring clockwise from NODE: address, id and key count of each node'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "leave" -d 'Ask NODE to hand its keys to its successor and leave the ring'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "demo" -d 'Start a local ring of 4 nodes on 127.0.0.1:8000-8003, show it working, serve until Ctrl-C'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "completions" -d 'Print shell completions for SHELL to stdout (the Debian package installs them)'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "man" -d 'Write the man pages (sdht.1 and one per subcommand) into DIR'
complete -c sdht -n "__fish_sdht_using_subcommand help; and not __fish_seen_subcommand_from serve put get delete ring leave demo completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
