"""The model of Linux anonymous memory, one module per kernel mechanism.

=====================  ==========================================
module                 kernel twin
=====================  ==========================================
``geometry``           PAGE_SHIFT / HPAGE_PMD_* constants
``settings``           mm/huge_memory.c + mm/khugepaged.c sysfs
``counters``           mm/vmstat.c events, per-size mTHP stats
``page_alloc``         mm/page_alloc.c buddy allocator, memcg charge
``folio``              struct folio / struct page (struct-of-arrays)
``pgtable``            page tables (PMD and PTE levels)
``vma``                mm/vma.c VMA split and merge
``rmap``               mm/rmap.c mapcounts and sharing
``memory``             mm/memory.c anonymous fault path, zap
``huge_memory``        mm/huge_memory.c eligibility, PMD split, deferred split
``swapfile``           mm/swapfile.c + mm/vmscan.c swap out / swap in
``mmap``               mm/mmap.c mmap / munmap, ``mprotect`` in mm/mprotect.c
``madvise``            mm/madvise.c
``fork``               kernel/fork.c dup_mm / exit
``khugepaged``         mm/khugepaged.c
``system``             the machine: ties it together
=====================  ==========================================
"""
