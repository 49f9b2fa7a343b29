"""What the tests and the benchmarks share: real speech, Morgan as real processes,
namespaced hosts and chaos.

    testbed.audio           speak / silence / resample / transcribe (espeak-ng, tiny.en)
    testbed.morgan_process  ``morgan up`` as a process and a WebSocket voice client
    testbed.conversation    a client that talks in turns and counts complete replies
    testbed.netns           several hosts on one machine (network namespaces, faults)
    testbed.deployment      a NATS cluster, processors and gateways across those hosts
    testbed.chaos           conversations while processors are killed and restarted

It may import ``schemas``, ``streams`` and ``processors``; nothing here imports ``tests``.
"""
