"""The backend-neutral serving core, shared by the simulator, the live backend and the kernel.

Torch-free and SimPy-free: a request's token accounting (`request`), paged KV block accounting
(`blocks`), continuous batching per micro-batch slot (`batcher`, priced through `work.BatchWork`),
and the policy interface (`policyapi`: the frozen view a policy reads and the actions it returns).
The same batching decisions on both sides are what make simulation-vs-live validation meaningful.
"""
