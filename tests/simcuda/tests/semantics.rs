//! The driver semantics the simulator reproduces, checked in-process through its exported
//! entry points: initialisation and context rules, frees of unknown or freed pointers, pools that
//! keep freed memory until a synchronisation or trim, virtual-memory handles that return only once
//! released and unmapped, primary-context reference counting, error names. Free memory as
//! `cuMemGetInfo_v2` reports it is the card's view (capacity minus everything used).
//!
//! One test function: the simulator is a per-process singleton configured by the environment.

use std::ffi::{CStr, c_char, c_void};
use std::ptr::{null, null_mut};

use cuda::exports::*;
use cuda::result::CuResult;
use vramguard_core::cuda::abi::{
    AccessDesc, AllocationProp, Array3dDescriptor, ArrayDescriptor, MemLocation, PoolProps,
};

const MIB: usize = 1 << 20;
const CONTEXT: usize = 100 * MIB;
const CAPACITY: usize = 1024 * MIB;

fn free_bytes() -> usize {
    let (mut free, mut total) = (0usize, 0usize);
    assert_eq!(
        // SAFETY: two valid, writable out-parameters: locals that outlive the call.
        unsafe { cuMemGetInfo_v2(&mut free, &mut total) },
        CuResult::SUCCESS
    );
    assert_eq!(total, CAPACITY);
    free
}

fn used() -> usize {
    CAPACITY - free_bytes()
}

fn alloc(bytes: usize) -> Result<u64, CuResult> {
    let mut pointer = 0u64;
    // SAFETY: a valid out-parameter.
    match unsafe { cuMemAlloc_v2(&mut pointer, bytes) } {
        CuResult::SUCCESS => Ok(pointer),
        error => Err(error),
    }
}

fn device_prop() -> AllocationProp {
    AllocationProp {
        allocation_type: 1,
        requested_handle_types: 0,
        location: MemLocation {
            location_type: 1,
            id: 0,
        },
        win32_handle_metadata: null_mut(),
        alloc_flags: [0; 8],
    }
}

fn error_name(code: CuResult) -> String {
    let mut text: *const c_char = null();
    // SAFETY: a valid out-parameter; on success it points to a static NUL-terminated string.
    let result = unsafe { cuGetErrorName(code, &mut text) };
    if result != CuResult::SUCCESS {
        return format!("unknown({})", code.0);
    }
    // SAFETY: see above.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_simulator_behaves_like_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before any simulator call, while this test (the only one in this binary) is
    // the only thread reading the environment.
    unsafe {
        std::env::set_var("SIMCUDA_STATE", dir.path().join("state"));
        std::env::set_var("SIMCUDA_DEVICES", "1GiB;2GiB");
        std::env::set_var("SIMCUDA_CONTEXT_COST", "100MiB");
        std::env::remove_var("CUDA_VISIBLE_DEVICES");
        std::env::remove_var("SIMCUDA_FRAGILE");
    }

    // Before cuInit: NOT_INITIALIZED; lookups and error names work.
    let mut count = 0;
    // SAFETY: valid out-parameters throughout this test.
    unsafe {
        assert_eq!(cuDeviceGetCount(&mut count), CuResult::NOT_INITIALIZED);
        assert_eq!(cuInit(1), CuResult::INVALID_VALUE);
        assert_eq!(cuInit(0), CuResult::SUCCESS);
        assert_eq!(cuDeviceGetCount(&mut count), CuResult::SUCCESS);
    }
    assert_eq!(count, 2);
    assert_eq!(
        error_name(CuResult::OUT_OF_MEMORY),
        "CUDA_ERROR_OUT_OF_MEMORY"
    );
    assert_eq!(error_name(CuResult(12345)), "unknown(12345)");
    let mut version = 0;
    assert_eq!(
        // SAFETY: a valid, writable out-parameter: a local that outlives the call.
        unsafe { cuDriverGetVersion(&mut version) },
        CuResult::SUCCESS
    );
    assert_eq!(version, 12080);

    // Device queries.
    let mut name = [0 as c_char; 64];
    let mut pci = [0 as c_char; 16];
    let (mut total, mut attribute) = (0usize, 0);
    // SAFETY: buffers of the sizes passed, valid out-parameters.
    unsafe {
        assert_eq!(cuDeviceGetName(name.as_mut_ptr(), 64, 1), CuResult::SUCCESS);
        assert_eq!(
            cuDeviceGetPCIBusId(pci.as_mut_ptr(), 16, 1),
            CuResult::SUCCESS
        );
        assert_eq!(cuDeviceTotalMem_v2(&mut total, 1), CuResult::SUCCESS);
        assert_eq!(
            cuDeviceGetAttribute(&mut attribute, 115, 0),
            CuResult::SUCCESS
        );
        assert_eq!(attribute, 1, "memory pools supported");
        assert_eq!(
            cuDeviceGetAttribute(&mut attribute, 75, 0),
            CuResult::SUCCESS
        );
        assert_eq!(attribute, 7);
        assert_eq!(
            cuDeviceGetAttribute(&mut attribute, 9999, 0),
            CuResult::INVALID_VALUE
        );
        assert_eq!(cuDeviceTotalMem_v2(&mut total, 2), CuResult::INVALID_DEVICE);
        assert_eq!(cuDeviceTotalMem_v2(&mut total, 1), CuResult::SUCCESS);
    }
    // SAFETY: NUL-terminated by cuDeviceGetName / cuDeviceGetPCIBusId.
    let (name, pci) = unsafe { (CStr::from_ptr(name.as_ptr()), CStr::from_ptr(pci.as_ptr())) };
    assert_eq!(name.to_str().unwrap(), "Simulated GPU 1");
    assert_eq!(pci.to_str().unwrap(), "0000:02:00.0");
    assert_eq!(total, 2048 * MIB);

    // No current context: allocation calls say so.
    assert_eq!(alloc(MIB), Err(CuResult::INVALID_CONTEXT));

    // Primary context: charged on the first retain, shared by later retains.
    let (mut primary, mut again): (*mut c_void, *mut c_void) = (null_mut(), null_mut());
    let (mut flags, mut active) = (0u32, 0);
    // SAFETY: valid out-parameters; handles come from the simulator.
    unsafe {
        assert_eq!(cuDevicePrimaryCtxRetain(&mut primary, 0), CuResult::SUCCESS);
        assert_eq!(cuDevicePrimaryCtxRetain(&mut again, 0), CuResult::SUCCESS);
        assert_eq!(primary, again);
        assert_eq!(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CuResult::SUCCESS
        );
        assert_eq!(active, 1);
        assert_eq!(cuCtxSetCurrent(primary), CuResult::SUCCESS);
    }
    assert_eq!(used(), CONTEXT);

    // Frees: unknown pointer and double free are INVALID_VALUE; nothing is returned twice.
    let pointer = alloc(300 * MIB).unwrap();
    assert_eq!(used(), CONTEXT + 300 * MIB);
    // SAFETY: plain values.
    unsafe {
        assert_eq!(cuMemFree_v2(pointer + 8), CuResult::INVALID_VALUE);
        assert_eq!(cuMemFree_v2(pointer), CuResult::SUCCESS);
        assert_eq!(cuMemFree_v2(pointer), CuResult::INVALID_VALUE);
        assert_eq!(
            cuMemFree_v2(0),
            CuResult::SUCCESS,
            "freeing NULL is a no-op"
        );
    }
    assert_eq!(used(), CONTEXT);
    assert_eq!(alloc(CAPACITY), Err(CuResult::OUT_OF_MEMORY));

    // Pitch: a real pitch, pitch x height charged.
    let (mut pitched, mut pitch) = (0u64, 0usize);
    // SAFETY: valid out-parameters.
    unsafe {
        assert_eq!(
            cuMemAllocPitch_v2(&mut pitched, &mut pitch, 1000, 100, 3),
            CuResult::INVALID_VALUE
        );
        assert_eq!(
            cuMemAllocPitch_v2(&mut pitched, &mut pitch, 1000, 100, 4),
            CuResult::SUCCESS
        );
    }
    assert_eq!(pitch, 1024);
    assert_eq!(used(), CONTEXT + 102_400);
    // SAFETY: a pointer from the simulator.
    assert_eq!(unsafe { cuMemFree_v2(pitched) }, CuResult::SUCCESS);

    // Pools: freed blocks stay with the pool until a synchronisation or a trim.
    let mut stream: *mut c_void = null_mut();
    let mut block = 0u64;
    // SAFETY: valid out-parameters; handles come from the simulator.
    unsafe {
        assert_eq!(cuStreamCreate(&mut stream, 0), CuResult::SUCCESS);
        assert_eq!(
            cuMemAllocAsync(&mut block, 200 * MIB, stream),
            CuResult::SUCCESS
        );
        assert_eq!(cuMemFreeAsync(block, stream), CuResult::SUCCESS);
    }
    assert_eq!(
        used(),
        CONTEXT + 200 * MIB,
        "the default pool keeps the freed block"
    );
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            cuMemAllocAsync(&mut block, 150 * MIB, stream),
            CuResult::SUCCESS
        );
    }
    assert_eq!(
        used(),
        CONTEXT + 200 * MIB,
        "served from the pool's reserve"
    );
    // SAFETY: as above.
    unsafe {
        assert_eq!(cuMemFreeAsync(block, stream), CuResult::SUCCESS);
        assert_eq!(cuMemFreeAsync(block, stream), CuResult::INVALID_VALUE);
        assert_eq!(cuStreamSynchronize(stream), CuResult::SUCCESS);
    }
    assert_eq!(
        used(),
        CONTEXT,
        "release threshold 0: synchronisation gives it back"
    );

    let props = PoolProps {
        allocation_type: 1,
        handle_types: 0,
        location: MemLocation {
            location_type: 1,
            id: 0,
        },
        win32_security_attributes: null_mut(),
        max_size: 0,
        usage: 0,
        reserved: [0; 54],
    };
    let mut pool: *mut c_void = null_mut();
    let threshold: u64 = u64::MAX;
    // SAFETY: valid in- and out-parameters; handles come from the simulator.
    unsafe {
        assert_eq!(cuMemPoolCreate(&mut pool, &props), CuResult::SUCCESS);
        let value = &threshold as *const u64 as *mut c_void;
        assert_eq!(cuMemPoolSetAttribute(pool, 4, value), CuResult::SUCCESS);
        assert_eq!(
            cuMemAllocFromPoolAsync(&mut block, 100 * MIB, pool, stream),
            CuResult::SUCCESS
        );
        assert_eq!(cuMemFreeAsync(block, stream), CuResult::SUCCESS);
        assert_eq!(cuCtxSynchronize(), CuResult::SUCCESS);
    }
    assert_eq!(
        used(),
        CONTEXT + 100 * MIB,
        "a high release threshold keeps it across synchronisation"
    );
    // SAFETY: a pool handle from the simulator.
    unsafe {
        assert_eq!(cuMemPoolTrimTo(pool, 40 * MIB), CuResult::SUCCESS);
    }
    assert_eq!(used(), CONTEXT + 40 * MIB);
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            cuMemAllocFromPoolAsync(&mut block, 10 * MIB, pool, stream),
            CuResult::SUCCESS
        );
        assert_eq!(cuMemPoolDestroy(pool), CuResult::SUCCESS);
        assert_eq!(cuMemPoolDestroy(pool), CuResult::INVALID_VALUE);
        assert_eq!(cuStreamDestroy_v2(stream), CuResult::SUCCESS);
        assert_eq!(cuStreamSynchronize(stream), CuResult::INVALID_HANDLE);
    }
    assert_eq!(
        used(),
        CONTEXT,
        "destroying the pool returns everything it held"
    );

    // Virtual memory: memory returns once released AND unmapped.
    let prop = device_prop();
    let (mut granularity, mut base, mut handle, mut retained) = (0usize, 0u64, 0u64, 0u64);
    let access = AccessDesc {
        location: MemLocation {
            location_type: 1,
            id: 0,
        },
        flags: 3,
    };
    let segment = 20 * MIB;
    // SAFETY: valid in- and out-parameters; handles and addresses come from the simulator.
    unsafe {
        assert_eq!(
            cuMemGetAllocationGranularity(&mut granularity, &prop, 0),
            CuResult::SUCCESS
        );
        assert_eq!(granularity, 2 * MIB);
        assert_eq!(
            cuMemCreate(&mut handle, 3 * MIB, &prop, 0),
            CuResult::INVALID_VALUE
        );
        assert_eq!(
            cuMemAddressReserve(&mut base, 4 * segment, 0, 0, 0),
            CuResult::SUCCESS
        );
        assert_eq!(
            cuMemCreate(&mut handle, segment, &prop, 0),
            CuResult::SUCCESS
        );
        assert_eq!(cuMemMap(base, segment, 0, handle, 0), CuResult::SUCCESS);
        assert_eq!(
            cuMemMap(base, segment, 0, handle, 0),
            CuResult::INVALID_VALUE,
            "overlap"
        );
        assert_eq!(
            cuMemMap(base + 8 * segment as u64, segment, 0, handle, 0),
            CuResult::INVALID_VALUE,
            "outside"
        );
        assert_eq!(cuMemSetAccess(base, segment, &access, 1), CuResult::SUCCESS);
        assert_eq!(
            cuMemSetAccess(base, 2 * segment, &access, 1),
            CuResult::INVALID_VALUE,
            "not all mapped"
        );
        assert_eq!(
            cuMemRetainAllocationHandle(&mut retained, (base + 4096) as *mut c_void),
            CuResult::SUCCESS
        );
        assert_eq!(retained, handle);
        assert_eq!(cuMemRelease(handle), CuResult::SUCCESS);
        assert_eq!(cuMemRelease(retained), CuResult::SUCCESS);
    }
    assert_eq!(used(), CONTEXT + segment, "released but still mapped");
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            cuMemAddressFree(base, 4 * segment),
            CuResult::INVALID_VALUE,
            "still mapped"
        );
        assert_eq!(cuMemUnmap(base, segment), CuResult::SUCCESS);
        assert_eq!(
            cuMemRelease(handle),
            CuResult::INVALID_VALUE,
            "already gone"
        );
        assert_eq!(cuMemAddressFree(base, 4 * segment), CuResult::SUCCESS);
    }
    assert_eq!(used(), CONTEXT);

    // Arrays and mipmapped arrays.
    let (mut array, mut mipmapped): (*mut c_void, *mut c_void) = (null_mut(), null_mut());
    let flat = ArrayDescriptor {
        width: 1024,
        height: 256,
        format: 0x20,
        channels: 4,
    };
    let bad = ArrayDescriptor {
        width: 1024,
        height: 256,
        format: 0x77,
        channels: 1,
    };
    let cube = Array3dDescriptor {
        width: 256,
        height: 256,
        depth: 0,
        format: 0x01,
        channels: 1,
        flags: 0,
    };
    // SAFETY: valid descriptors and out-parameters.
    unsafe {
        assert_eq!(cuArrayCreate_v2(&mut array, &bad), CuResult::INVALID_VALUE);
        assert_eq!(cuArrayCreate_v2(&mut array, &flat), CuResult::SUCCESS);
        assert_eq!(
            cuMipmappedArrayCreate(&mut mipmapped, &cube, 3),
            CuResult::SUCCESS
        );
    }
    assert_eq!(
        used(),
        CONTEXT + 1024 * 256 * 16 + 256 * 256 + 128 * 128 + 64 * 64
    );
    // SAFETY: handles from the simulator.
    unsafe {
        assert_eq!(cuMipmappedArrayDestroy(array), CuResult::INVALID_HANDLE);
        assert_eq!(cuArrayDestroy(array), CuResult::SUCCESS);
        assert_eq!(cuMipmappedArrayDestroy(mipmapped), CuResult::SUCCESS);
    }
    assert_eq!(used(), CONTEXT);

    // Created contexts cost memory, become current, and take their allocations with them.
    let mut created: *mut c_void = null_mut();
    let mut current: *mut c_void = null_mut();
    // SAFETY: valid out-parameters; handles from the simulator.
    unsafe {
        assert_eq!(cuCtxCreate_v2(&mut created, 0, 0), CuResult::SUCCESS);
        assert_eq!(cuCtxGetCurrent(&mut current), CuResult::SUCCESS);
        assert_eq!(current, created);
    }
    alloc(50 * MIB).unwrap();
    assert_eq!(used(), 2 * CONTEXT + 50 * MIB);
    // SAFETY: as above.
    unsafe {
        assert_eq!(cuCtxDestroy_v2(created), CuResult::SUCCESS);
        assert_eq!(cuCtxDestroy_v2(created), CuResult::INVALID_CONTEXT);
        assert_eq!(cuCtxGetCurrent(&mut current), CuResult::SUCCESS);
        assert_eq!(current, primary, "the destroyed context left the stack");
    }
    assert_eq!(used(), CONTEXT);

    // Releasing the primary context's last reference returns it and its allocations.
    alloc(10 * MIB).unwrap();
    // SAFETY: plain values and out-parameters.
    unsafe {
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CuResult::SUCCESS);
        assert_eq!(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CuResult::SUCCESS
        );
        assert_eq!(active, 1, "one reference left");
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CuResult::SUCCESS);
        assert_eq!(
            cuDevicePrimaryCtxGetState(0, &mut flags, &mut active),
            CuResult::SUCCESS
        );
        assert_eq!(active, 0);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CuResult::INVALID_CONTEXT);
        let mut free = 0usize;
        let mut total = 0usize;
        assert_eq!(
            cuMemGetInfo_v2(&mut free, &mut total),
            CuResult::INVALID_CONTEXT,
            "the current context is gone"
        );
        assert_eq!(cuDevicePrimaryCtxRetain(&mut again, 0), CuResult::SUCCESS);
        assert_eq!(again, primary, "the primary context keeps its handle");
    }
    assert_eq!(used(), CONTEXT, "the 10 MiB went with the released context");
}
